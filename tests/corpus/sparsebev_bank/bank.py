"""Sparse4D-v3-style instance bank: the most confident instances of the last frame are carried over,
warped into the current ego frame, and compete with the fresh anchors."""
import torch
import torch.nn as nn


class InstanceBank(nn.Module):
    def __init__(self, num_anchor, embed_dims, num_temp, max_time_interval=2.0, decay=0.6):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        xyz = torch.rand(num_anchor, 3, generator=g) * torch.tensor([60.0, 60.0, 4.0]) - torch.tensor([30.0, 30.0, 2.0])
        anchor = torch.cat([xyz, torch.zeros(num_anchor, 3), torch.zeros(num_anchor, 1), torch.ones(num_anchor, 1),
                            torch.zeros(num_anchor, 2)], 1)                    # x y z log(w l h) sin cos vx vy
        self.anchor = nn.Parameter(anchor)
        self.instance_feature = nn.Parameter(torch.zeros(num_anchor, embed_dims))
        self.num_temp = num_temp
        self.max_time_interval = max_time_interval
        self.decay = decay
        self.reset()

    def reset(self):
        self.cached_feature = None
        self.cached_anchor = None
        self.cached_confidence = None
        self.cached_time = None
        self.cached_pose = None

    def get(self, timestamp, ego_pose):
        bs = ego_pose.shape[0]
        anchor = self.anchor[None].expand(bs, -1, -1)
        feature = self.instance_feature[None].expand(bs, -1, -1)
        if self.cached_anchor is None:
            return feature, anchor, None, None
        if (timestamp - self.cached_time).abs().max() > self.max_time_interval:  # gt: sync medium
            self.reset()
            return feature, anchor, None, None
        # previous ego frame -> current ego frame
        prev2cur = torch.linalg.inv(ego_pose) @ self.cached_pose  # gt: cpu_fallback medium
        cached = self.cached_anchor
        xyz = (prev2cur[:, None, :3, :3] @ cached[..., :3, None]).squeeze(-1) + prev2cur[:, None, :3, 3]  # gt: fused_op low
        yaw = prev2cur[:, None, :2, :2] @ cached[..., 6:8, None].flip(-2)
        vel = (prev2cur[:, None, :2, :2] @ cached[..., 8:10, None]).squeeze(-1)
        dt = (timestamp - self.cached_time)[:, None, None]
        warped = torch.cat([xyz + torch.cat([vel * dt, torch.zeros_like(xyz[..., :1])], -1), cached[..., 3:6],
                            yaw.squeeze(-1).flip(-1), vel], -1)
        return feature, anchor, self.cached_feature, warped

    @torch.no_grad()
    def update(self, feature, anchor, cls_logits, timestamp, ego_pose):
        confidence = cls_logits.max(-1).values.sigmoid()
        if self.cached_confidence is not None:
            carried = confidence[:, : self.num_temp]
            confidence = torch.cat([torch.maximum(self.cached_confidence * self.decay, carried),
                                    confidence[:, self.num_temp:]], 1)
        top_conf, idx = confidence.topk(self.num_temp, dim=1)  # trap: sync topk with a fixed k needs no read
        self.cached_confidence = top_conf
        self.cached_feature = feature.gather(1, idx[..., None].expand(-1, -1, feature.shape[-1])).detach()
        self.cached_anchor = anchor.gather(1, idx[..., None].expand(-1, -1, anchor.shape[-1])).detach()
        self.cached_time = timestamp
        self.cached_pose = ego_pose
