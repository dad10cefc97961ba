"""Streaming query memory (StreamPETR-style): the top-k queries of each frame are kept, moved into the
next frame's ego coordinates and fed back as extra queries; old entries age out."""
import torch


class QueryMemory:
    def __init__(self, size, topk, max_age):
        self.size, self.topk, self.max_age = size, topk, max_age
        self.query = self.ref = self.age = None

    def reset(self, bs, dim, device):
        self.query = torch.zeros(bs, 0, dim, device=device)
        self.ref = torch.zeros(bs, 0, 3, device=device)
        self.age = torch.zeros(bs, 0, device=device)

    def align(self, ego_delta):
        """ego_delta (B, 4, 4): previous ego frame -> current ego frame."""
        homo = torch.cat([self.ref, torch.ones_like(self.ref[..., :1])], -1)
        self.ref = (homo @ ego_delta.transpose(1, 2))[..., :3]
        self.age = self.age + 1

    def write(self, query, ref, scores):
        top = scores.topk(self.topk, dim=1).indices                          # (B, k)
        q = query.gather(1, top[..., None].expand(-1, -1, query.shape[-1])).detach()
        r = ref.gather(1, top[..., None].expand(-1, -1, 3)).detach()
        self.query = torch.cat([q, self.query], 1)[:, :self.size]
        self.ref = torch.cat([r, self.ref], 1)[:, :self.size]
        self.age = torch.cat([torch.zeros_like(top, dtype=self.age.dtype), self.age], 1)[:, :self.size]

    def prune(self):
        stale = self.age > self.max_age
        self.query[stale] = 0.0  # trap: sync masked write, not a read
        live = int((~stale).any(0).sum())  # gt: sync medium
        self.query, self.ref, self.age = self.query[:, :live], self.ref[:, :live], self.age[:, :live]
