"""Tracking-by-query bookkeeping: track identities live on the host, features on the device."""
import torch


class TrackBank:
    """Keeps the query features of live tracks between frames; ids and ages are host-side Python."""

    def __init__(self, dim, max_age=3, score_thr=0.4):
        self.dim, self.max_age, self.score_thr = dim, max_age, score_thr
        self.next_id = 0
        self.ages = {}
        self.features = None
        self.ids = []

    def reset(self):
        self.__init__(self.dim, self.max_age, self.score_thr)

    def update(self, queries, scores):
        """queries (Q, D) on the device, scores (Q,) on the device."""
        keep = scores > self.score_thr
        if keep.any():  # gt: sync medium keep-any
            kept = queries[keep].detach()  # gt: sync medium keep-mask
        else:
            kept = queries[:0].detach()
        kept_scores = scores[keep].cpu()  # gt: sync low keep-cpu
        new_ids = []
        for s in kept_scores:  # trap: small_op_loop host-side id bookkeeping on a CPU tensor
            if s.item() > 0.5 or len(self.ids) == 0:  # trap: sync .item() of a tensor already on the host
                new_ids.append(self.next_id)
                self.next_id += 1
            else:
                new_ids.append(self.ids[len(new_ids) % len(self.ids)])
        for tid in list(self.ages):
            self.ages[tid] += 1
            if self.ages[tid] > self.max_age:
                del self.ages[tid]
        for tid in new_ids:
            self.ages[tid] = 0
        self.ids = new_ids
        self.features = kept
        return kept
