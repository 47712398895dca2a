"""One loaded model (run by a backend) plus its preprocessing and postprocessing, shared by every stream.

The uint8 frame is resized on the host with OpenCV (area averaging when shrinking), then uploaded and
normalised on the model's device; the mask is the arg-max at inference size, downloaded as uint8 and enlarged
on the host. So a frame costs one upload and one download of inference-size uint8 images, whatever the camera
resolution, and the same resize runs on every device (a checkpoint sees the inputs it was trained on). On a
CPU this is also the cheap way: OpenCV shrank a 640x480 frame to 320x240 in 0.36 ms, PyTorch's antialiased
bilinear resize took 1.45 ms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vidseg_ros.models.base import State, VideoSegModel
from vidseg_ros.motion.warp import resize_flow
from vidseg_ros.runtime.backends import Backend, EagerBackend
from vidseg_ros.runtime.checkpoint import ModelMeta
from vidseg_ros.runtime.class_ids import upsample_ids
from vidseg_ros.runtime.steps import default_flow_hw


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; asking for CUDA without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but no CUDA device is available")
    return torch.device(requested)


def cpu_threads(requested: int, cores: int | None = None) -> int:
    """PyTorch intra-op threads for the node's ``model.threads``: ``requested``, or for 0 half the cores.

    On a 2-core machine the default two threads of a model step compete with DDS, image decoding and the
    other nodes; one thread ran the demo's NetWarp step in 28 ms against 51 ms with two.
    """
    if requested > 0:
        return requested
    return max(1, (cores or os.cpu_count() or 2) // 2)


def backend_request(device: str, backend: str) -> str:
    """The :func:`~vidseg_ros.runtime.backends.select_backend` request for the node's ``model.device`` (auto,
    cpu, cuda) and ``model.backend`` (auto, torch, tensorrt, onnxruntime) parameters.

    ``auto`` with ``model.device: cpu`` stays ``auto``: pass ``cpu_only=True`` to ``select_backend`` with it,
    so it picks onnxruntime when it imports and the model exports, else PyTorch on the CPU.
    """
    if backend == "tensorrt":
        return "tensorrt"
    if backend == "torch":
        return pick_device(device).type
    if backend == "onnxruntime":
        from vidseg_ros.runtime.ort_backend import provider_problem

        if device == "cuda":
            pick_device("cuda")
            return "onnxruntime-cuda"
        # device auto: the CUDA provider where onnxruntime-gpu and a GPU are both present.
        gpu = device == "auto" and torch.cuda.is_available() and provider_problem("cuda") is None
        return "onnxruntime-cuda" if gpu else "onnxruntime"
    # auto on model.device cuda: TensorRT where it can run, else PyTorch; otherwise select_backend's auto.
    if device == "cuda":
        from vidseg_ros.runtime.trt_backend import torch_tensorrt_problem

        pick_device("cuda")
        return "cuda" if torch_tensorrt_problem() else "tensorrt"
    return "auto"


@dataclass(frozen=True)
class FrameTensors:
    """A frame prepared for the model: normalised image at inference size and a small grey image for flow."""

    image: torch.Tensor
    gray: np.ndarray | None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (w, h): area averaging when shrinking (no aliasing), bilinear otherwise."""
    w, h = size
    if image.shape[:2] == (h, w):
        return np.ascontiguousarray(image)
    shrink = w < image.shape[1] or h < image.shape[0]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def flow_image(small: np.ndarray, flow_size: tuple[int, int]) -> np.ndarray:
    """The grey image DIS sees: an inference-size RGB frame shrunk to ``flow_size`` (w, h)."""
    return cv2.cvtColor(resize_image(small, flow_size), cv2.COLOR_RGB2GRAY)


class Segmenter:
    """Runs the key and non-key steps of a model on numpy RGB frames."""

    def __init__(
        self,
        model: VideoSegModel,
        meta: ModelMeta,
        *,
        backend: Backend | None = None,
        device: torch.device | str = "cpu",
        input_size: tuple[int, int] | None = None,
        flow_downscale: int = 2,
        key_interval: int | None = None,
    ) -> None:
        self.backend: Backend = backend or EagerBackend(model, device=str(device))
        self.device = self.backend.device
        self.model = model
        self.meta = meta
        w, h = input_size or tuple(meta.input_size)
        if w <= 0 or h <= 0:
            w, h = meta.input_size
        self.input_size = (int(w), int(h))
        self.key_interval = model.key_interval if key_interval is None else int(key_interval)
        # (x - mean) / std as x * scale + shift, for 0..255 pixels.
        mean = torch.tensor(meta.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(meta.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._scale, self._shift = 1.0 / std, -mean / std
        self.flow = None
        self.flow_size = default_flow_hw(self.input_size[::-1], flow_downscale)[::-1]  # (w, h), as input_size
        if model.uses_motion:
            from vidseg_ros.motion.flow import DISFlow

            # Frames are shrunk to flow_size here (once per frame, kept for the next one), so DIS gets them as is.
            self.flow = DISFlow(downscale=1.0)

    @property
    def uses_motion(self) -> bool:
        return self.flow is not None

    def prepare_backend(self) -> None:
        """Builds (or loads) every step the backend runs at this inference size: exports and sessions, or CUDA
        graphs, happen now rather than at the first frame that takes each step."""
        w, h = self.input_size
        fw, fh = self.flow_size
        self.backend.prepare((h, w), (fh, fw) if self.uses_motion else None)

    def prepare(self, rgb: np.ndarray, *, for_flow: bool = True) -> FrameTensors:
        """Resize, upload and normalise one ``[H, W, 3]`` uint8 RGB frame.

        ``for_flow=False`` (a frame whose motion comes from its decoder) skips the small grey image DIS takes.
        """
        small = resize_image(rgb, self.input_size)
        x = torch.from_numpy(small).to(self.device, non_blocking=True).permute(2, 0, 1)
        if self.device.type == "cpu":
            # Contiguous (NCHW) while still uint8, where the copy is cheapest. Left channels-last, the float image
            # was copied again by the onnxruntime backend at every step (its non-key steps read two images);
            # now this whole function takes 0.20 instead of 0.45 ms at 320x240 and 0.80 instead of 1.83 ms at
            # 640x480 (1 thread), and PyTorch's steps run as fast either way. GPUs keep the layout they had.
            x = x.contiguous()
        # One new tensor, scaled and shifted in place: 0.43 against 0.58 ms at 640x480 for (x - mean) / std.
        image = x.unsqueeze(0).float().mul_(self._scale).add_(self._shift)
        gray = None
        if self.flow is not None and for_flow:
            gray = flow_image(small, self.flow_size)
        return FrameTensors(image=image, gray=gray)

    def motion(self, current: FrameTensors, previous: FrameTensors) -> torch.Tensor:
        """Reverse flow t -> t-1 as a ``[1, 2, h, w]`` tensor on the model's device."""
        assert self.flow is not None and current.gray is not None and previous.gray is not None
        flow = self.flow(current.gray, previous.gray)
        return torch.from_numpy(flow).unsqueeze(0).to(self.device)

    def codec_motion(self, flow: np.ndarray | None) -> torch.Tensor:
        """A decoder's reverse flow (``[2, h, w]`` in pixels of its own grid) at the size DIS flow has here, as
        ``[1, 2, h, w]`` on the model's device, so the steps see the shapes they were built for."""
        if flow is None:
            raise ValueError("a non-key frame needs codec motion; an I-frame has none")
        size = (self.flow_size[1], self.flow_size[0])
        return resize_flow(torch.from_numpy(flow).unsqueeze(0), size).to(self.device)

    def key_step(self, frame: FrameTensors) -> tuple[torch.Tensor, State]:
        return self.backend.key_step(frame.image)

    def nonkey_step(
        self, frame: FrameTensors, previous: FrameTensors, flow: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        return self.backend.nonkey_step(frame.image, previous.image, flow, state)

    def synchronize(self) -> None:
        """Wait for queued device work, so that stage times are not charged to the next stage (CUDA only)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def to_mask(self, logits: torch.Tensor, out_hw: tuple[int, int]) -> np.ndarray:
        """Arg-max at inference size, downloaded as uint8, then enlarged to ``out_hw`` (nearest, centred).

        ``logits`` are ``[1, C, h, w]`` scores at the inference size or, as the CPU backends return them, at
        the classifier's own size (``native``, :func:`~vidseg_ros.models.fpn.model_output`), where the arg-max of their
        bilinear upsampling is taken without upsampling most of them (:func:`upsample_ids`). A backend may
        also return the ids already (uint8 ``[1, 1, H, W]``).
        """
        hw = (self.input_size[1], self.input_size[0])
        if logits.dtype == torch.uint8:
            ids = logits[0, 0].cpu().numpy()
        elif logits.device.type == "cpu" and logits.shape[1] < 256:
            ids = upsample_ids(logits[0], hw)
        else:
            if tuple(logits.shape[-2:]) != hw:
                logits = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
            # max().indices rather than argmax(): the same ids, faster.
            ids = logits[0].max(dim=0).indices.to(torch.uint8).cpu().numpy()
        if ids.shape != out_hw:
            ids = cv2.resize(ids, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        return ids
