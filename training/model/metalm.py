"""MetaLM: a causal decoder fed by non-causal encoders through connectors (semi-causal LM, DESIGN.md 2).

The decoder input at a text-span position is the language encoder's output for that token (through
the text connector); at an image slot it is the vision encoder's output (through the image connector);
elsewhere it is the token embedding. Sinusoidal positions are added everywhere, attention is causal
over the whole sequence, and the loss is the next-token cross-entropy where `loss_mask` is 1
(causal positions; the data pipeline sets it, see training/data/batch.py). Packed finetuning rows
(`batch.packed`) keep attention inside each example and restart positions per example (`attention_mask`).

Tensor parallelism: the decoder, both encoders and the resampler split heads / FFN across the TP
group (megatron-core Column/RowParallelLinear); the token embeddings are vocab-parallel and the
decoder's output layer is tied to its embedding (vocab-parallel logits + vocab-parallel CE). The TP
group comes from the Topology passed in, inside one LayerSpec per component (training/model/spec.py).
"""

from __future__ import annotations

import logging
import math
import zlib

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, vocab_parallel_cross_entropy
from torch import nn

from common.errors import UserError
from common.special_tokens import BOS_ID, PAD_ID
from parallel.groups import Topology
from training.data.batch import Batch
from training.model.config import ModelConfig
from training.model.connectors import LinearConnector, ResamplerBlock, ResamplerConnector
from training.model.encoders import LanguageEncoder, VisionEncoder, vocab_embedding
from training.model.layers import (
    KVCache,
    TransformerLayer,
    TransformerStack,
    packed_attention_mask,
    sinusoidal_positions,
)
from training.model.spec import component_specs

log = logging.getLogger(__name__)

COMPONENTS = {  # component -> top-level submodules (parameter counts, freezing, lr multipliers)
    "decoder": ("embedding", "decoder"),
    "text_encoder": ("text_encoder",),
    "vision_encoder": ("vision_encoder",),
    "connectors": ("text_connector", "image_connector"),
}
_COMPONENT_OF = {m: comp for comp, mods in COMPONENTS.items() for m in mods}


def component_of(param_name: str) -> str:
    """The component ("decoder", "text_encoder", "vision_encoder", "connectors") a parameter belongs to."""
    top = param_name.split(".", 1)[0]
    if top not in _COMPONENT_OF:
        raise ValueError(f"parameter {param_name!r} belongs to no MetaLM component ({', '.join(COMPONENTS)})")
    return _COMPONENT_OF[top]


class MetaLM(nn.Module):
    """The semi-causal MetaLM. `forward(batch)` returns the mean CE over `batch.loss_mask`."""

    def __init__(self, cfg: ModelConfig, topology: Topology, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        # weights on disk are checked only where they are loaded (not when counting on the meta device)
        problems = cfg.problems(
            topology.tp_size, topology.world_size, check_files=topology.device.type != "meta"
        )
        if problems:
            raise UserError(problems)
        self.cfg = cfg
        self.topology = topology
        d, te, ve, c = cfg.decoder, cfg.text_encoder, cfg.vision_encoder, cfg.connector
        self.specs = specs = component_specs(cfg, topology, params_dtype)
        dec = specs["decoder"]
        self.embed_dropout = dec.hidden_dropout
        self.padded_vocab = cfg.padded_vocab_size()

        # build directly on the target device (GPU ranks never hold a CPU copy); init fills it below
        with torch.device(topology.device):
            self.embedding = vocab_embedding(self.padded_vocab, d.hidden_size, dec)
            self.embed_scale = math.sqrt(d.hidden_size)
            self.decoder = TransformerStack(
                num_layers=d.num_layers,
                hidden=d.hidden_size,
                heads=d.num_heads,
                ffn=d.ffn_hidden_size,
                spec=dec,
                causal=True,
                norm_scheme=d.norm_scheme,
            )
            # tied output: logits shard = hidden @ embedding_shard.T (weight passed at call time)
            self.output_layer = ColumnParallelLinear(
                d.hidden_size,
                self.padded_vocab,
                config=dec.mp,
                init_method=lambda t: None,
                bias=False,
                gather_output=False,
                skip_weight_param_allocation=True,
                tp_group=dec.tp_group,
            )
            self.text_encoder = LanguageEncoder(te, self.padded_vocab, specs["text_encoder"])
            self.text_connector = LinearConnector(te.hidden_size, d.hidden_size, specs["connectors"])
            self.vision_encoder = VisionEncoder(ve, specs["vision_encoder"])
            if c.kind == "resampler":
                self.image_connector = ResamplerConnector(
                    ve.hidden_size,
                    d.hidden_size,
                    specs["connectors"],
                    num_latents=c.num_latents,
                    num_layers=c.resampler_layers,
                    heads=c.resampler_heads,
                )
            else:
                self.image_connector = LinearConnector(ve.hidden_size, d.hidden_size, specs["connectors"])
        if topology.device.type != "meta":  # counting on meta needs no DeepSpeed import
            _register_tied_output_weight(self)
        # megatron resolves the group it actually uses (the global TP group when none is given)
        self.tp_group = self.embedding.tp_group
        self.tp_size = 1 if self.tp_group is None else self.tp_group.size()
        self.tp_rank = 0 if self.tp_group is None else self.tp_group.rank()

        if self.embedding.weight.device.type != "meta":
            self.init_weights()
            if params_dtype != torch.float32:
                self.to(params_dtype)
            if ve.weights_path:
                from training.model.vision_weights import load_vision_weights

                load_vision_weights(self, ve.weights_path)
            if te.weights_path:
                from training.model.text_weights import load_text_weights

                load_text_weights(self, te.weights_path)
        self.apply_freeze()
        loaded = {"text_encoder": te.weights_path, "vision_encoder": ve.weights_path}
        unloaded = [c for c in cfg.frozen_components() if not loaded.get(c)]
        if unloaded and not cfg.freeze.allow_random and topology.device.type != "meta":
            log.warning(
                "frozen at their initial weights unless loaded next (checkpoint.load_weights_from): %s",
                ", ".join(unloaded),
            )
        self.train()  # a new module trains: the frozen modules go to eval mode now (`train`)
        counts = self.parameter_counts()
        log.info(
            "MetaLM %s parameters: %s",
            cfg.preset,
            ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()),
        )

    # ------------------------------------------------------------------------------------------------
    def full_shape(self, p: torch.Tensor) -> tuple[int, ...]:
        """Shape of the whole (all TP ranks) tensor this parameter is a shard of."""
        shape = list(p.shape)
        if getattr(p, "tensor_model_parallel", False):
            shape[p.partition_dim] *= self.tp_size
        return tuple(shape)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize every parameter from its full tensor drawn with a per-name seeded generator and keep
        this rank's shard: the weights are identical for every TP size."""
        for name, p in self.named_parameters():
            p.copy_(self.shard(self.full_init(name, p), p).to(p.dtype))

    @torch.no_grad()
    def full_init(self, name: str, p: torch.Tensor | None = None) -> torch.Tensor:
        """The full (all TP ranks) fp32 CPU tensor `init_weights` draws for parameter `name` (a docked
        vocabulary keeps these rows for tokens it lacks)."""
        p = dict(self.named_parameters())[name] if p is None else p
        init = getattr(p, "metalm_init", None)
        if init is None:
            raise RuntimeError(f"parameter {name} has no init rule")
        g = torch.Generator().manual_seed(
            (self.cfg.init_seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63
        )
        full = torch.empty(
            self.full_shape(p), dtype=torch.float32, device="cpu"
        )  # CPU RNG: same on any device
        init(full, g)
        return full

    def shard(self, full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """This TP rank's slice of a full tensor for parameter p."""
        if not getattr(p, "tensor_model_parallel", False):
            return full
        return full.chunk(self.tp_size, dim=p.partition_dim)[self.tp_rank]

    def parameter_counts(self, trainable: bool | None = None) -> dict[str, int]:
        """Full-model (all TP ranks) parameter counts by component, and the total. trainable: None = all
        parameters, True = only those that train, False = only the frozen ones."""
        counts = {}
        for comp, mods in COMPONENTS.items():
            counts[comp] = sum(
                math.prod(self.full_shape(p))
                for m in mods
                for p in getattr(self, m).parameters()
                if trainable is None or p.requires_grad == trainable
            )
        counts["total"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------------------------------------
    def apply_freeze(self) -> None:
        """`model.freeze`: whole components (decoder, connectors) and every embedding stage. The encoders'
        `trainable_layers` are applied by the encoders themselves."""
        f = self.cfg.freeze
        frozen: list[nn.Parameter] = []
        if f.decoder:
            frozen += [p for m in COMPONENTS["decoder"] for p in getattr(self, m).parameters()]
        if f.embeddings:
            frozen += [self.embedding.weight, *self.text_encoder.embedding_parameters()]
            frozen += self.vision_encoder.embedding_parameters()
        if f.connectors:
            frozen += [p for m in COMPONENTS["connectors"] for p in getattr(self, m).parameters()]
        for p in frozen:
            p.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that stay in eval mode while the model trains (no dropout): every Transformer layer /
        resampler block whose parameters are all frozen, and an encoder's embedding dropout when its
        embedding stage is frozen. A frozen pretrained layer computes what it computed when pretrained."""
        units: list[nn.Module] = [
            m
            for m in self.modules()
            if isinstance(m, (TransformerLayer, ResamplerBlock))
            and not any(p.requires_grad for p in m.parameters())
        ]
        for enc in (self.text_encoder, self.vision_encoder):
            if not any(p.requires_grad for p in enc.embedding_parameters()):
                units.append(enc.embed_dropout)
        return units

    def train(self, mode: bool = True) -> MetaLM:
        """nn.Module.train, keeping the frozen modules (`frozen_modules`) in eval mode. Called by the
        constructor after freezing; call it again after changing requires_grad by hand."""
        super().train(mode)
        if mode:
            for m in self.frozen_modules():
                m.train(False)
        return self

    # ------------------------------------------------------------------------------------------------
    def _scatter(self, flat: torch.Tensor, values: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
        """Out-of-place: flat[dest[i]] = values[i] for dest >= 0 (gradients flow to both).

        Padding entries (dest = -1) are written to a scratch row that is dropped afterwards, so there is
        no data-dependent shape (no host-device sync on GPU)."""
        n = flat.shape[0]
        dest = dest.reshape(-1)
        dest = torch.where(dest >= 0, dest, torch.full_like(dest, n))
        padded = torch.cat([flat, flat.new_zeros(1, flat.shape[1])])
        return padded.index_copy(0, dest, values.reshape(-1, values.shape[-1]).to(flat.dtype))[:n]

    def encode_spans(self, span_tokens: torch.Tensor) -> torch.Tensor:
        """[S, L] -> decoder-width vectors [S, L-1, H] for the span tokens."""
        return self.text_connector(self.text_encoder(span_tokens))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> decoder-width image slots [N, K, H]."""
        return self.image_connector(self.vision_encoder(images))

    def embed(self, batch: Batch) -> torch.Tensor:
        """Decoder input [B, T, H]: `input_embeddings` plus sinusoidal positions (0..T-1, or
        `batch.positions` for packed rows, restarting per example), then embedding dropout."""
        t = batch.tokens.shape[1]
        h = self.input_embeddings(batch)
        pos = batch.positions if batch.packed else torch.arange(t, device=batch.tokens.device)
        h = h + sinusoidal_positions(pos, h.shape[-1], h.dtype)
        train = self.training and self.embedding.weight.requires_grad  # frozen decoder embedding: no dropout
        return F.dropout(h, self.embed_dropout if train else 0.0, train)

    def attention_mask(self, batch: Batch) -> torch.Tensor | None:
        """The decoder's attention mask: None (plain causal, the fast path) for unpacked batches; for packed
        rows a [B, 1, T, T] mask keeping each example to itself (built once, shared by all layers)."""
        return packed_attention_mask(batch.example_ids) if batch.packed else None

    def input_embeddings(self, batch: Batch) -> torch.Tensor:
        """Token embeddings [B, T, H] with span / image positions replaced (no positions, no dropout).

        Every encoder runs on every call; one without input in this batch runs on a dummy input whose
        output is added with weight 0, so every rank produces gradients for the same parameters."""
        b, t = batch.tokens.shape
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds model.decoder.max_seq_len={self.cfg.max_seq_len}")
        h = self.embedding(batch.tokens) * self.embed_scale
        flat = h.reshape(b * t, h.shape[-1])
        zero = flat.new_zeros(())
        dev = batch.tokens.device
        if batch.span_tokens.shape[0] > 0:
            flat = self._scatter(flat, self.encode_spans(batch.span_tokens), batch.span_dest)
        else:
            dummy = torch.tensor([[BOS_ID, PAD_ID]], dtype=torch.long, device=dev)
            zero = zero + self.encode_spans(dummy).sum() * 0.0
        if batch.images.shape[0] > 0:
            slots = self.encode_images(batch.images)
            if slots.shape[1] != batch.image_dest.shape[1]:
                raise ValueError(
                    f"batch has {batch.image_dest.shape[1]} slots per image; the model makes "
                    f"{slots.shape[1]} (ModelConfig.image_slots)"
                )
            flat = self._scatter(flat, slots, batch.image_dest)
        else:
            s = self.cfg.image_size
            dummy = torch.zeros(1, 3, s, s, device=dev, dtype=flat.dtype)
            zero = zero + self.encode_images(dummy).sum() * 0.0
        return flat.view(b, t, -1) + zero

    def logits_shard(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel logits [.., padded_vocab / tp] (tied to the embedding); padded ids masked."""
        logits = self.output_layer(hidden, weight=self.embedding.weight)[0]
        start = self.tp_rank * logits.shape[-1]
        n_pad = start + logits.shape[-1] - self.cfg.vocab_size
        if n_pad > 0:
            valid = torch.arange(start, start + logits.shape[-1], device=logits.device) < self.cfg.vocab_size
            logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        return logits

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the real vocabulary [.., vocab_size], identical on every TP rank (generation; no grad)."""
        logits = self.logits_shard(hidden)
        if self.tp_size > 1:
            # plain all_gather (megatron's gather allocates on torch.cuda.current_device()); no autograd
            parts = [torch.empty_like(logits) for _ in range(self.tp_size)]
            torch.distributed.all_gather(parts, logits.detach().contiguous(), group=self.tp_group)
            logits = torch.cat(parts, dim=-1)
        return logits[..., : self.cfg.vocab_size]

    def forward(self, batch: Batch, reduction: str = "mean") -> torch.Tensor:
        """Semi-causal LM loss. reduction: "mean" (scalar mean CE over loss_mask), "sum", or "none"
        (per-token losses [B, T], zero where loss_mask is 0). Identical on the ranks of a TP group."""
        h = self.decoder(self.embed(batch), self.attention_mask(batch))
        logits = self.logits_shard(h)
        targets = torch.where(batch.loss_mask > 0, batch.targets, torch.zeros_like(batch.targets))
        losses = vocab_parallel_cross_entropy(logits.float(), targets) * batch.loss_mask.float()
        if reduction == "none":
            return losses
        if reduction == "sum":
            return losses.sum()
        if reduction == "mean":
            return losses.sum() / batch.loss_mask.float().sum().clamp(min=1.0)
        raise ValueError(f"reduction={reduction!r}: use 'mean', 'sum' or 'none'")

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        """Full-vocabulary logits [B, T, vocab_size] for a batch (inspection and tests; no grad)."""
        return self.full_logits(self.decoder(self.embed(batch), self.attention_mask(batch)))

    # ------------------------------------------------------------------------------------------------
    def decode_step(
        self,
        embeds: torch.Tensor,
        start: int | torch.Tensor,
        cache: KVCache | None,
        mask: torch.Tensor | None = None,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder on input embeddings [B, t, H] (generation; with a KV cache); full logits
        [B, t, vocab], or [B, vocab] at one position per row with `last` ([B] indices into t).

        start: the first position (positions start..start+t-1 for every row), or position ids [B, t].
        mask: None (causal) or a full [B, 1, t, cached + t] bool mask (training/model/layers.py)."""
        t = embeds.shape[1]
        pos = torch.arange(start, start + t, device=embeds.device) if isinstance(start, int) else start
        h = embeds + sinusoidal_positions(pos, embeds.shape[-1], embeds.dtype)
        h = self.decoder(h, mask, cache=cache)
        if last is not None:  # the vocabulary projection only where it is needed
            h = h[torch.arange(h.shape[0], device=h.device), last]
        return self.full_logits(h)

    def generate(
        self,
        images: torch.Tensor,
        prompt_ids=None,
        max_new_tokens: int = 32,
        eos_id: int = 2,
        use_cache: bool = True,
        num_beams: int = 1,
    ) -> list[list[int]]:
        """Caption each image: `<s> <image> [K slots] </image> [prompt]` then greedy (or beam) decoding.

        Returns the generated token ids per image (without the prompt and without the final eos)."""
        from training.model.generation import generate

        return generate(
            self,
            images,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            use_cache=use_cache,
            num_beams=num_beams,
        )


def _register_tied_output_weight(model: MetaLM) -> None:
    """The output layer uses the embedding weight outside the embedding's forward: tell ZeRO-3 to gather it
    around every output-layer call (training forward and generation alike; bookkeeping only without ZeRO-3)."""
    try:
        import deepspeed
    except ImportError:  # DeepSpeed is optional for inference-only use
        return
    deepspeed.zero.register_external_parameter(model.output_layer, model.embedding.weight)


def meta_model(cfg: ModelConfig) -> MetaLM:
    """`cfg`'s MetaLM on the meta device (shapes and freezing only: no weights allocated or loaded)."""
    with torch.device("meta"):
        return MetaLM(cfg, Topology.single_process("meta"))


def count_parameters(cfg: ModelConfig, trainable: bool | None = None) -> dict[str, int]:
    """Parameter counts by component for `cfg`, built on the meta device (no weights allocated).
    trainable: None = all, True = trainable only, False = frozen only (MetaLM.parameter_counts)."""
    return meta_model(cfg).parameter_counts(trainable)
