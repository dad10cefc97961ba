"""Entry-point migration rewrites on BEVDet's tools/train.py shape: idempotent, git-apply-able."""
from __future__ import annotations

from _codemod_helpers import git_apply_check
from npu_advise.recommendations.codemods import migration
from npu_advise.recommendations.codemods.diffs import to_fix

BEVDET_TRAIN = '''import argparse
import torch
from mmcv.parallel import MMDataParallel, MMDistributedDataParallel


def parse_args():
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--local_rank', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    model = build_model(args)
    model = MMDistributedDataParallel(model.cuda(), device_ids=[torch.cuda.current_device()])
    model = MMDataParallel(model, device_ids=[0])


if __name__ == '__main__':
    main()
'''


def _apply_all(src):
    for fn in (migration.rewrite_transfer_to_npu, migration.rewrite_patcher, migration.rewrite_local_rank,
               migration.rewrite_npu_ddp):
        r = fn(src)
        if r is not None:
            src = r.new_source
    return src


def test_each_rewrite_applies_and_is_idempotent(tmp_path):
    for i, fn in enumerate((migration.rewrite_transfer_to_npu, migration.rewrite_patcher,
                            migration.rewrite_local_rank, migration.rewrite_npu_ddp)):
        r = fn(BEVDET_TRAIN)
        assert r is not None and r.auto_applicable
        git_apply_check(tmp_path / str(i), "tools/train.py", BEVDET_TRAIN,
                        to_fix("tools/train.py", BEVDET_TRAIN, r, "x", "migration").diff)
        assert fn(r.new_source) is None


def test_all_together_match_the_seed():
    out = _apply_all(BEVDET_TRAIN)
    assert "import torch_npu\n" in out and "from torch_npu.contrib import transfer_to_npu\n" in out
    assert "from mx_driving.patcher import default_patcher_builder\n" in out
    assert "if __name__ == '__main__':\n    with default_patcher_builder.build() as patcher:\n        main()\n" in out
    assert ("    parser.add_argument('--local-rank', type=int, default=0)\n"
            "    parser.add_argument('--local_rank', type=int, default=0)\n") in out
    assert "NPUDistributedDataParallel(model.cuda()" in out and "NPUDataParallel(model, device_ids=[0])" in out
    assert "from mmcv.parallel import" not in out
    assert "from mmcv.device.npu import NPUDataParallel, NPUDistributedDataParallel" in out
    compile(out, "train.py", "exec")
    assert _apply_all(out) == out
