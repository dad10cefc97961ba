"""ResNet-style backbone (stem + bottlenecks) and a three-level FPN, as mmdet builds them."""
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    expansion = 2

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * self.expansion, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)  # gt: fused_op low
        return out


class ResNetFPN(nn.Module):
    def __init__(self, out_channels=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # trap: fused_op npu_max_pool2d has no backward, this is training
        self.layer1 = Bottleneck(16, 16, stride=2)      # stride 8
        self.layer2 = Bottleneck(32, 24, stride=2)      # stride 16
        self.layer3 = Bottleneck(48, 32, stride=2)      # stride 32
        self.lateral = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in (32, 48, 64)])
        self.fpn = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, 1, 1) for _ in range(3)])

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        c3 = self.layer1(x)
        c4 = self.layer2(c3)
        c5 = self.layer3(c4)
        laterals = [lat(c) for lat, c in zip(self.lateral, (c3, c4, c5))]  # trap: small_op_loop one conv per level
        for i in range(len(laterals) - 1, 0, -1):  # trap: small_op_loop top-down path, each level needs the one above
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        return [conv(p) for conv, p in zip(self.fpn, laterals)]  # trap: small_op_loop one conv per level
