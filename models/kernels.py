"""How LipDub's transformer runs on its device: the kernel choices that change rounding, not the algorithm.

Two of them compute in float8 on GPUs that have float8 matrix units (compute capability 8.9 and up):

- ``fp8_linears``: the transformer blocks' linear layers through torchao's float8 recipe: weights stored
  in e4m3 with one scale per output row, activations quantised per row as they run (fused into the
  preceding kernel when the block is compiled), products by ``torch._scaled_mm``.
- ``attention="cudnn_fp8"``: the video self-attention (``attn1``, by far the largest: every video
  token against every video token) through cuDNN's float8 attention (cudnn-frontend). Query, key and
  value are quantised to e4m3 with one scale per tensor from their largest magnitude; the softmax
  probabilities with a fixed scale (they lie in [0, 1]); the output, which Hopper's cuDNN writes in
  e4m3, with a scale from the value's largest magnitude (an attention output is a weighted mean of
  values, so it never exceeds it). The other attentions (audio, cross, audio-video) stay bf16.

Drift of each against the bf16 take of the same weights: BENCHMARKS.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

FP8_ATTENTION = "cudnn_fp8"  # dubflow's own attention choice; any other value names a diffusers backend
E4M3_MAX = 448.0  # largest finite float8 e4m3 value
SOFTMAX_SCALE = 256.0  # the unnormalised softmax probabilities lie in [0, 1]: a power of two below E4M3_MAX


@dataclass(frozen=True)
class Kernels:
    """How LipDub's transformer runs (a CPU applies only ``fp8_weights``). None changes the algorithm;
    each changes the rounding of its arithmetic (measured in BENCHMARKS.md), so each is part of a take's key."""

    fp8_weights: bool = False  # weights stored in float8 (e4m3), cast per layer as it runs: half the memory
    attention: str = "native"  # a diffusers attention backend ("native": PyTorch's SDPA), or FP8_ATTENTION
    compile_blocks: bool = False  # torch.compile of the transformer block, once per process (regional)
    fp8_linears: bool = False  # linear layers computed in float8 (torchao, per-row scales); stores them in fp8 too

    def __post_init__(self) -> None:
        if self.fp8_weights and self.fp8_linears:
            raise ValueError("fp8_weights (float8 storage, bf16 compute) and fp8_linears (float8 compute, which "
                             "stores the weights in float8 too) exclude each other: choose one")


def check_fp8_support(device: torch.device, kernels: Kernels) -> None:
    """Refuse float8 kernels that ``device`` or this install cannot run, saying how to switch back."""
    if not (kernels.fp8_linears or kernels.attention == FP8_ATTENTION):
        return
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"{device} has no float8 matrix units (NVIDIA compute capability 8.9 and up): "
                         "use DUBFLOW_KERNELS=bf16 (fp8_linears off, a bf16 attention)")
    import importlib.util

    needed = (["torchao"] if kernels.fp8_linears else []) + (["cudnn"] if kernels.attention == FP8_ATTENTION else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"float8 kernels need {', '.join(missing)}: pip install 'dubflow[gpu]' "
                         "(torchao, nvidia-cudnn-frontend), or use DUBFLOW_KERNELS=bf16")


def use_fp8_linears(blocks: torch.nn.Module) -> None:
    """Quantise ``blocks``' linear layers in place for float8 compute (torchao's dynamic per-row recipe)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def eligible(module: torch.nn.Module, name: str) -> bool:
        # _scaled_mm needs both dimensions in multiples of 16; the tiny ones gain nothing anyway
        return (isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0
                and module.out_features % 16 == 0 and min(module.in_features, module.out_features) >= 256)

    quantize_(blocks, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=eligible)


def use_fp8_attention(attentions: list[torch.nn.Module]) -> None:
    """Route these diffusers LTX-2 attention modules (unmasked self-attention) to ``fp8_attention``.

    diffusers' attention registry accepts only the backends it names, so the LTX-2 module's dispatch
    function is wrapped once: calls whose processor names FP8_ATTENTION come here, the rest go on
    to diffusers unchanged."""
    from diffusers.models.transformers import transformer_ltx2

    if not getattr(transformer_ltx2.dispatch_attention_fn, "routes_fp8_attention", False):
        transformer_ltx2.dispatch_attention_fn = _dispatch_with_fp8(transformer_ltx2.dispatch_attention_fn)
    for attention in attentions:
        attention.processor._attention_backend = FP8_ATTENTION


def _dispatch_with_fp8(dispatch):
    def dispatch_attention_fn(query, key, value, attn_mask=None, *args, backend=None, **kwargs):
        if backend == FP8_ATTENTION:
            if attn_mask is not None:
                raise ValueError("cudnn_fp8 attention is wired for unmasked self-attention only")
            return fp8_attention(query, key, value)
        return dispatch(query, key, value, attn_mask, *args, backend=backend, **kwargs)

    dispatch_attention_fn.routes_fp8_attention = True
    return dispatch_attention_fn


def fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Softmax attention of [batch, tokens, heads, head_dim] tensors in float8 through cuDNN; same layout out.

    The quantisation is plain tensor arithmetic, so under torch.compile it fuses into the kernels that
    produce query, key and value; the attention itself is one opaque cuDNN call."""
    if query.device.type != "cuda" or query.shape[-1] % 16:
        raise ValueError(f"cudnn_fp8 attention runs on CUDA with head sizes in multiples of 16, got "
                         f"{query.device.type} tensors of head size {query.shape[-1]}: use a bf16 attention")
    q8, q_descale = _quantize(query)
    k8, k_descale = _quantize(key)
    v8, v_descale = _quantize(value)
    o_scale = 0.5 / v_descale  # half the value's scale: headroom for the output's rounding
    out8 = torch.ops.dubflow.cudnn_fp8_attention(q8, k8, v8, q_descale, k_descale, v_descale, o_scale)
    return (out8.float() / o_scale).to(query.dtype)


def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 copy of ``x`` scaled so its largest magnitude maps to E4M3_MAX, and the factor that undoes it."""
    amax = x.abs().amax().float().clamp_min(1e-12)
    scale = E4M3_MAX / amax
    quantized = (x.float() * scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return quantized, (1.0 / scale).reshape(1, 1, 1, 1)


@torch.library.custom_op("dubflow::cudnn_fp8_attention", mutates_args=())
def _cudnn_fp8_attention(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, q_descale: torch.Tensor,
                         k_descale: torch.Tensor, v_descale: torch.Tensor, o_scale: torch.Tensor) -> torch.Tensor:
    q8, k8, v8 = q8.contiguous(), k8.contiguous(), v8.contiguous()
    plan = _CudnnFp8Plan.get(q8.shape, k8.shape, q8.device)
    return plan.run(q8, k8, v8, q_descale, k_descale, v_descale, o_scale)


@_cudnn_fp8_attention.register_fake
def _(q8, k8, v8, q_descale, k_descale, v_descale, o_scale):
    return q8.new_empty(q8.shape)


class _CudnnFp8Plan:
    """One built cuDNN float8 attention graph per (device, shapes), built on first use (~1 s) and kept."""

    _plans: dict[tuple, "_CudnnFp8Plan"] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, q_shape: torch.Size, kv_shape: torch.Size, device: torch.device) -> "_CudnnFp8Plan":
        key = (str(device), tuple(q_shape), tuple(kv_shape))
        with cls._lock:
            if key not in cls._plans:
                cls._plans[key] = cls(tuple(q_shape), tuple(kv_shape), device)
            return cls._plans[key]

    def __init__(self, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], device: torch.device) -> None:
        torch.backends.cudnn.version()  # loads PyTorch's libcudnn first: the frontend binds to the loaded one
        import cudnn

        batch, q_tokens, heads, dim = q_shape
        kv_tokens = kv_shape[1]
        with torch.cuda.device(device):
            self.handle = cudnn.create_handle()
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32,
                              handle=self.handle)

        def layout(tokens: int) -> dict:  # [batch, tokens, heads, dim] in memory, seen as [batch, heads, tokens, dim]
            return dict(dim=[batch, heads, tokens, dim], stride=[tokens * heads * dim, dim, heads * dim, 1])

        self.q = graph.tensor(name="q", data_type=e4m3, **layout(q_tokens))
        self.k = graph.tensor(name="k", data_type=e4m3, **layout(kv_tokens))
        self.v = graph.tensor(name="v", data_type=e4m3, **layout(kv_tokens))
        scalar = dict(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
        self.scalars = [graph.tensor(name=n, **scalar) for n in ("dq", "dk", "dv", "ds", "ss", "so")]
        dq, dk, dv, ds, ss, so = self.scalars
        self.o, _, self.amax_s, self.amax_o = graph.sdpa_fp8(
            q=self.q, k=self.k, v=self.v, descale_q=dq, descale_k=dk, descale_v=dv, descale_s=ds,
            scale_s=ss, scale_o=so, is_inference=True, attn_scale=dim ** -0.5, use_causal_mask=False,
            name="video_self_attention")
        # Hopper's cuDNN writes float8 attention outputs in float8 only
        self.o.set_output(True).set_data_type(e4m3).set_dim(layout(q_tokens)["dim"]).set_stride(
            layout(q_tokens)["stride"])
        for amax in (self.amax_s, self.amax_o):
            amax.set_output(True).set_data_type(fp32).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1])
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        self.graph = graph
        self.workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=device)
        self.softmax = torch.tensor([SOFTMAX_SCALE, 1.0 / SOFTMAX_SCALE], dtype=torch.float32,
                                    device=device).reshape(2, 1, 1, 1, 1)
        self.amaxes = torch.empty(2, 1, 1, 1, 1, dtype=torch.float32, device=device)
        self.cudnn = cudnn

    def run(self, q8, k8, v8, q_descale, k_descale, v_descale, o_scale) -> torch.Tensor:
        out = torch.empty_like(q8)
        dq, dk, dv, ds, ss, so = self.scalars
        pack = {self.q: q8, self.k: k8, self.v: v8, dq: q_descale.float().contiguous(),
                dk: k_descale.float().contiguous(), dv: v_descale.float().contiguous(), ds: self.softmax[1],
                ss: self.softmax[0], so: o_scale.float().contiguous(), self.o: out,
                self.amax_s: self.amaxes[0], self.amax_o: self.amaxes[1]}
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return out
