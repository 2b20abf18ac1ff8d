"""Student/teacher models: loading with the Auto classes (the student's parameters in fp32 as
master weights, the teacher's in its compute dtype), and a wrapper whose forward returns per-token
log-probs, entropy and the teacher KL through the policy head from the decoder's last hidden
states, so no code path builds the tokens x vocab logits. Must not hold any loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainer.batch import TeacherSignal
from trainer.config import ConfigError, ModelConfig
from trainer.kernels import HeadOutput, policy_head

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
           "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype: `auto` is bf16 on CUDA and fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def model_path(path: str) -> str:
    """A model path with `{smollm2}` replaced by the prepared offline SmolLM2-135M-Instruct."""
    from longblocks.errors import LongBlocksError
    from longblocks.local_models import resolve_model

    try:
        return resolve_model(path)
    except LongBlocksError as exc:
        raise ConfigError(str(exc)) from None


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    name = model_path(cfg.tokenizer or cfg.path)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:  # transformers' "not a folder / not on the Hub / no tokenizer"
        raise ConfigError(f"could not load tokenizer {name!r}: {_first_line(exc)}") from None


def load_causal_lm(cfg: ModelConfig, device: torch.device, *, master_weights: bool = True) -> Any:
    """`AutoModelForCausalLM` on `device`: parameters in fp32 when `master_weights` (the trained
    student: the optimizer steps fp32 values, compute runs in `cfg.dtype`), else in `cfg.dtype`
    (a frozen teacher)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if master_weights else resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path(cfg.path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load model {cfg.path!r}: {_first_line(exc)}") from None
    if cfg.keep_layers:
        keep_first_layers(model, cfg.keep_layers)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model.to(device)


def keep_first_layers(model: Any, layers: int) -> None:
    """Cut a decoder to its first `layers` layers (embeddings, final norm and head kept): a smaller
    student that shares the model's tokenizer; its config says so, so a saved copy reloads as it is."""
    decoder = model.get_decoder()
    total = len(decoder.layers)
    if layers > total:
        raise ConfigError(f"model.keep_layers = {layers}, but the model has {total} decoder layers")
    decoder.layers = decoder.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]


class FusedLogprobLM(nn.Module):
    """Wraps a `*ForCausalLM`: forward(input_ids, position_ids) -> the policy head's per-token
    outputs for the next tokens [B, T-1] from the last hidden states and the LM-head weight. Being
    the root module lets FSDP2 unshard the head (tied or not) around the head's GEMMs."""

    def __init__(self, causal_lm: Any) -> None:
        super().__init__()
        self.lm = causal_lm

    @property
    def decoder(self) -> nn.Module:
        return self.lm.get_decoder()

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # No attention mask: transformers detects packed samples from restarting position ids and
        # keeps attention inside each sample (varlen with flash attention, block mask otherwise).
        out = self.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def forward(
        self, input_ids: torch.Tensor | None, position_ids: torch.Tensor | None = None, *, temperature: float = 1.0,
        mask: torch.Tensor | None = None, entropy: bool = False, teacher: TeacherSignal | None = None,
        run: Callable[[Any], Any] | None = None,
    ) -> HeadOutput | Any:
        """The policy head on the next tokens [B, T-1]: log-probs, entropy when asked, the KL to the
        `teacher` signal's teacher. `run=fn` calls fn(wrapped model) instead: under FSDP2 the root's
        parameters are gathered only around the root's forward."""
        if run is not None:
            return run(self.lm)
        hidden = self.hidden_states(input_ids, position_ids)[:, :-1]
        targets = input_ids[:, 1:]
        flat = hidden.reshape(-1, hidden.shape[-1])
        out = policy_head(flat, self.lm.get_output_embeddings().weight, targets.reshape(-1), temperature=temperature,
                          entropy=entropy, mask=None if mask is None else mask.reshape(-1),
                          **(teacher.head_arguments() if teacher is not None else {}))
        shape = targets.shape  # copies, not views: FSDP2's backward hook must not sit on a view
        return HeadOutput(*(None if t is None else t.view(shape).clone() for t in
                            (out.logprobs, out.entropy, out.kl, out.teacher_logprobs)))
