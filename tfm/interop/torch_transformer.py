"""Import a `torch.nn.Transformer` state dict into tfm's encoder and decoder stacks, and call them as PyTorch would.

nn.Transformer packs each attention's query, key and value projections into one `in_proj_weight` (3d, d), rows in
that order; tfm keeps three Linear layers, so the matrix is split in three. nn.Transformer always ends each stack
with a LayerNorm (`encoder.norm`, `decoder.norm`), even in post-norm models, so the imported config has final_norm on.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import numpy as np
from tinygrad import Context, Tensor
from tinygrad.nn.state import get_state_dict

from tfm.io import stored

from tfm.io import weights
from tfm.config import TransformerConfig
from tfm.errors import InputError, WeightsError
from tfm.interop.mapping import Conversion
from tfm.nn.transformer import Decoder, Encoder
from tfm.runtime.placement import resolve_device

# nn.Transformer's names inside one layer -> tfm's, per stack; "in_proj" entries are the packed q/k/v projections
ENCODER_NAMES = {"self_attn.in_proj": "self_attn", "self_attn.out_proj": "self_attn.out_proj", "linear1": "ffn.fc1",
                 "linear2": "ffn.fc2", "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
DECODER_NAMES = {**ENCODER_NAMES, "multihead_attn.in_proj": "encoder_attn", "multihead_attn.out_proj": "encoder_attn.out_proj",
                 "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"}


def as_numpy(value: Any) -> np.ndarray:
  """A torch tensor (any dtype or device), a tinygrad Tensor or an array-like -> numpy, without importing torch."""
  if isinstance(value, Tensor): return value.numpy()
  if hasattr(value, "detach"):  # a torch tensor: bfloat16 has no numpy dtype, so widen floats first
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()
  return np.asarray(value)


def read_state_dict(source: str | os.PathLike | dict[str, Any]) -> dict[str, np.ndarray]:
  """A state dict as float32 arrays: a dict of tensors/arrays, a .safetensors file, or a torch.save file (needs torch)."""
  if isinstance(source, dict): return {k: as_numpy(v).astype(np.float32) for k, v in source.items()}
  path = os.fspath(source)
  if path.endswith(".safetensors"): return dict(stored.read_arrays(path, "state dict file")[1])
  if os.path.isdir(path): raise WeightsError(f"{path} is a directory; give a state dict file (.pt, .pth or .safetensors)")
  if not os.path.exists(path): raise WeightsError(f"state dict file {path} does not exist; check the path")
  try:
    import torch
  except ImportError:
    raise WeightsError(f"reading {path} (a torch.save pickle) needs PyTorch: pip install torch, or save the state dict as "
                       f"safetensors where torch is: safetensors.torch.save_file(model.state_dict(), 'model.safetensors')") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a bad pickle; all mean "not a state dict file"
    raise WeightsError(f"{path} is not a readable torch state dict ({type(e).__name__}: {e}); "
                       f"save one with torch.save(model.state_dict(), path)") from None
  if not isinstance(state, dict):
    raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict(), not the model")
  return read_state_dict(state)


def _expected_torch_shapes(stack: str, layers: int, d: int, d_ff: int) -> dict[str, tuple[int, ...]]:
  """Every tensor of one nn.Transformer stack with its shape, under PyTorch's names."""
  def attn(n: str) -> dict[str, tuple[int, ...]]:
    return {f"{n}.in_proj_weight": (3 * d, d), f"{n}.in_proj_bias": (3 * d,), f"{n}.out_proj.weight": (d, d), f"{n}.out_proj.bias": (d,)}
  def norm(n: str) -> dict[str, tuple[int, ...]]: return {f"{n}.weight": (d,), f"{n}.bias": (d,)}
  layer = {**attn("self_attn"), "linear1.weight": (d_ff, d), "linear1.bias": (d_ff,), "linear2.weight": (d, d_ff),
           "linear2.bias": (d,), **norm("norm1"), **norm("norm2")}
  if stack == "decoder": layer.update({**attn("multihead_attn"), **norm("norm3")})
  return {**{f"{stack}.layers.{i}.{k}": shape for i in range(layers) for k, shape in layer.items()}, **norm(f"{stack}.norm")}


def _layer_count(state: dict[str, np.ndarray], prefix: str) -> int:
  found = {int(m.group(1)) for k in state if (m := re.match(rf"{prefix}\.layers\.(\d+)\.", k))}
  return max(found) + 1 if found else 0


def convert_torch_transformer(source: str | os.PathLike | dict[str, Any], nhead: int, norm_first: bool = False,
                              activation: str = "relu", layer_norm_eps: float = 1e-5) -> Conversion:
  """An nn.Transformer state dict -> tfm stack names and a config derived from the shapes, every name and shape checked."""
  state = read_state_dict(source)
  where = os.fspath(source) if not isinstance(source, dict) else "state dict"
  probe = next((k for k in ("encoder.layers.0.self_attn.in_proj_weight", "decoder.layers.0.self_attn.in_proj_weight") if k in state), None)
  if probe is None:
    raise WeightsError(f"{where} is not a torch.nn.Transformer state dict: it has no encoder.layers.0.self_attn.in_proj_weight "
                       f"(its first keys: {', '.join(list(state)[:3])}). If the Transformer is a submodule, strip its prefix: "
                       f"{{k.removeprefix('transformer.'): v for k, v in sd.items() if k.startswith('transformer.')}}")
  d = state[probe].shape[1]
  ff_key = probe.replace("self_attn.in_proj_weight", "linear1.weight")
  if ff_key not in state: raise WeightsError(f"{where}: missing tensor {ff_key}; it is not a whole nn.Transformer state dict")
  d_ff = state[ff_key].shape[0]
  n_enc, n_dec = _layer_count(state, "encoder"), _layer_count(state, "decoder")
  # the stacks have no vocabulary: 3 is the least vocab_size that holds the config's pad, bos and eos ids
  config = TransformerConfig(vocab_size=3, d_model=d, n_heads=nhead, d_ff=d_ff, n_encoder_layers=n_enc,
                             n_decoder_layers=n_dec, dropout=0.0, norm_first=norm_first, activation=activation,
                             layer_norm_eps=layer_norm_eps, final_norm=True)
  expected = {**_expected_torch_shapes("encoder", n_enc, d, d_ff), **_expected_torch_shapes("decoder", n_dec, d, d_ff)}
  stored.check_arrays(state, expected, where)

  conv = Conversion(config, "stacks", {})
  for key, value in state.items():
    stack, rest = key.split(".", 1)
    if rest.startswith("norm."):
      conv.arrays[f"{stack}.layer_norm.{rest[5:]}"] = value
      conv.mapped.append((key, f"{stack}.layer_norm.{rest[5:]}"))
      continue
    _, i, name = rest.split(".", 2)
    module, param = name.rsplit(".", 1) if "in_proj" not in name else name.rsplit("_", 1)
    target = f"{stack}.layers.{i}.{(ENCODER_NAMES if stack == 'encoder' else DECODER_NAMES)[module]}"
    if "in_proj" in name:
      for proj, part in zip("qkv", np.split(value, 3)): conv.arrays[f"{target}.{proj}_proj.{param}"] = part
      conv.mapped.append((key, f"{target}.{{q,k,v}}_proj.{param} (split in 3)"))
    else:
      conv.arrays[f"{target}.{param}"] = value
      conv.mapped.append((key, f"{target}.{param}"))
  conv.notes.append(f"config from the shapes: d_model={d} n_heads={nhead} d_ff={d_ff} layers={n_enc}+{n_dec} "
                    f"norm_first={norm_first} activation={activation} layer_norm_eps={layer_norm_eps}; final stack norms on")
  return conv


class TorchTransformer:
  """torch.nn.Transformer's encoder and decoder stacks on tfm layers, called with PyTorch's argument and mask conventions.

  Inputs are embedded sequences, batch first (nn.Transformer(batch_first=True)): src (B, S, d), tgt (B, T, d), as
  numpy arrays, tinygrad Tensors or torch tensors. Masks follow PyTorch: a bool mask is True where attention is NOT
  allowed (a pad key, a future position); a float mask is added to the attention scores (0 or -inf).
  attn masks are (T, S) or (B * nhead, T, S); key padding masks are (B, S).
  """

  def __init__(self, config: TransformerConfig, device: str | None = None):
    self.config = config
    self.device, self.target = resolve_device(device, one="an imported nn.Transformer (TorchTransformer)")
    with self.on_device():
      self.encoder_stack, self.decoder_stack = Encoder(config), Decoder(config)

  def on_device(self) -> contextlib.AbstractContextManager:
    """Build and compile kernels for the backend that was asked for (as Transformer.on_device)."""
    return Context(DEV=self.target) if self.target else contextlib.nullcontext()   # tinygrad-0.14: renderer picked from DEV at compile

  def state(self) -> dict[str, Tensor]:
    """The stacks' tensors under the names a "stacks" weight file uses (encoder.*, decoder.*)."""
    return {**{f"encoder.{k}": v for k, v in get_state_dict(self.encoder_stack).items()},
            **{f"decoder.{k}": v for k, v in get_state_dict(self.decoder_stack).items()}}

  def _input(self, x: Any, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else Tensor(as_numpy(x).astype(np.float32), device=self.device)
    if t.ndim != 3 or t.shape[-1] != self.config.d_model:
      raise InputError(f"{name} must be embedded inputs of shape (batch, length, {self.config.d_model}) (batch first), "
                       f"got shape {tuple(t.shape)}")
    return t.to(self.device).float()

  def _mask(self, attn_mask: Any, key_padding_mask: Any, b: int, tq: int, tk: int, names: tuple[str, str]) -> Tensor | None:
    """PyTorch's attn mask and key padding mask -> one additive (B or 1, H or 1, Tq, Tk) mask, or None."""
    total = None
    h = self.config.n_heads
    for mask, name, shapes in ((attn_mask, names[0], {(tq, tk): (1, 1, tq, tk), (b * h, tq, tk): (b, h, tq, tk)}),
                               (key_padding_mask, names[1], {(b, tk): (b, 1, 1, tk)})):
      if mask is None: continue
      arr = as_numpy(mask)
      if arr.shape not in shapes:
        raise InputError(f"{name} has shape {arr.shape}; expected one of {', '.join(map(str, shapes))} "
                         f"(PyTorch's convention, batch first)")
      if arr.dtype != np.bool_ and arr.dtype.kind != "f":
        raise InputError(f"{name} has dtype {arr.dtype}; give a bool mask (True = masked) or a float mask (added to the scores)")
      additive = np.where(arr, -np.inf, 0.0) if arr.dtype == np.bool_ else arr
      additive = additive.astype(np.float32).reshape(shapes[arr.shape])
      total = additive if total is None else total + additive
    return None if total is None else Tensor(total, device=self.device)

  def encoder(self, src: Any, mask: Any = None, src_key_padding_mask: Any = None) -> Tensor:
    """nn.TransformerEncoder: src (B, S, d) -> memory (B, S, d)."""
    x = self._input(src, "src")
    b, s, _ = x.shape
    with self.on_device():  # realized here, so the kernels compile for the backend that was asked for
      return self.encoder_stack(x, self._mask(mask, src_key_padding_mask, b, s, s, ("mask", "src_key_padding_mask"))).realize()

  def decoder(self, tgt: Any, memory: Any, tgt_mask: Any = None, memory_mask: Any = None,
              tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None) -> Tensor:
    """nn.TransformerDecoder: tgt (B, T, d) attending to memory (B, S, d) -> (B, T, d). Causality comes only from tgt_mask."""
    x, mem = self._input(tgt, "tgt"), self._input(memory, "memory")
    (b, t, _), s = x.shape, mem.shape[1]
    if mem.shape[0] != b: raise InputError(f"memory has batch size {mem.shape[0]} but tgt has {b}; give one memory per target")
    self_mask = self._mask(tgt_mask, tgt_key_padding_mask, b, t, t, ("tgt_mask", "tgt_key_padding_mask"))
    cross_mask = self._mask(memory_mask, memory_key_padding_mask, b, t, s, ("memory_mask", "memory_key_padding_mask"))
    with self.on_device():
      return self.decoder_stack(x, mem, self_mask, cross_mask).realize()

  def __call__(self, src: Any, tgt: Any, src_mask: Any = None, tgt_mask: Any = None, memory_mask: Any = None,
               src_key_padding_mask: Any = None, tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None) -> Tensor:
    """nn.Transformer.forward: encoder then decoder."""
    memory = self.encoder(src, src_mask, src_key_padding_mask)
    return self.decoder(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask)


def _build(conv: Conversion, device: str | None, source: str) -> TorchTransformer:
  model = TorchTransformer(conv.config, device)
  weights.assign(model.state(), conv.arrays, source)
  return model


def load_torch_transformer(path_or_state_dict: str | os.PathLike | dict[str, Any], nhead: int, norm_first: bool = False,
                           activation: str = "relu", layer_norm_eps: float = 1e-5, device: str | None = None) -> TorchTransformer:
  """Import a torch.nn.Transformer state dict (a dict, a torch.save file or a .safetensors file) into tfm's stacks.

  nhead, norm_first, activation ("relu" or "gelu") and layer_norm_eps are the nn.Transformer's constructor arguments,
  which a state dict does not record; d_model, dim_feedforward and the layer counts come from the tensor shapes.
  """
  conv = convert_torch_transformer(path_or_state_dict, nhead, norm_first, activation, layer_norm_eps)
  where = os.fspath(path_or_state_dict) if not isinstance(path_or_state_dict, dict) else "state dict"
  return _build(conv, device, where)


def load_stacks(path: str | os.PathLike, device: str | None = None) -> TorchTransformer:
  """The stacks of a tfm weight file of kind "stacks" (what `tfm convert` writes for an nn.Transformer state dict)."""
  wf = weights.read(path)
  if wf.kind != "stacks":
    raise WeightsError(f"{os.fspath(path)} holds a whole Transformer, not encoder/decoder stacks; load it with tfm.load")
  return _build(Conversion(wf.config, wf.kind, wf.arrays), device, os.fspath(path))
