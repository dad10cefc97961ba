"""MOTR-style end-to-end multi-object tracking on synthetic clips: detect queries plus track queries
carried from frame to frame."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from tracker import TrackBank

DIM, NUM_DET, CLIP = 32, 10, 3


class FrameEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 5, 4, 2), nn.ReLU(), nn.Conv2d(16, DIM, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        return self.net(x).flatten(2).transpose(1, 2)


class QueryDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.det_queries = nn.Parameter(torch.randn(NUM_DET, DIM) * 0.1)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, DIM))
        self.score = nn.Linear(DIM, 1)
        self.box = nn.Linear(DIM, 4)

    def forward(self, memory, track_queries):
        q = torch.cat([track_queries, self.det_queries], 0)[None]
        q = q + self.attn(q, memory, memory)[0]
        q = q + self.ffn(q)
        q = q[0]
        return q, self.score(q).squeeze(-1), self.box(q).sigmoid()


def clip_targets(g, frames):
    boxes = torch.rand(4, 4, generator=g) * 0.5 + 0.25
    motion = (torch.rand(4, 4, generator=g) - 0.5) * 0.05
    return [boxes + t * motion for t in range(frames)]


def match_loss(scores, boxes, gt_boxes):
    """Each ground truth takes the query whose box is closest (argmin over an L1 cost)."""
    cost = torch.cdist(gt_boxes, boxes.detach(), p=1)
    idx = cost.argmin(1)
    target = torch.zeros_like(scores)
    target[idx] = 1.0
    return F.binary_cross_entropy_with_logits(scores, target) + F.l1_loss(boxes[idx], gt_boxes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(12)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    encoder, decoder = FrameEncoder().to(device), QueryDecoder().to(device)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-4)  # gt: optimizer medium
    bank = TrackBank(DIM)
    g = torch.Generator().manual_seed(3)
    all_losses = []
    for clip in range(args.clips):
        frames = torch.randn(CLIP, 3, 64, 64, generator=g).to(device)
        targets = [t.to(device) for t in clip_targets(g, CLIP)]
        bank.reset()
        loss = 0.0
        track_q = torch.zeros(0, DIM, device=device)
        for t, (frame, gt) in enumerate(zip(frames, targets)):  # trap: small_op_loop frames depend on the previous tracks
            memory = encoder(frame[None])
            q, scores, boxes = decoder(memory, track_q)
            loss = loss + match_loss(scores, boxes, gt)
            track_q = bank.update(q, scores.sigmoid())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
        all_losses.append(loss.detach())
        print(f"clip {clip} loss {loss.item():.6f} tracks {len(bank.ids)}")  # gt: sync medium
    print("per-clip losses", [round(v, 6) for v in torch.stack(all_losses).tolist()])  # trap: sync after training


if __name__ == "__main__":
    main()
