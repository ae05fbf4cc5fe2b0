"""A volume's image features for one model: from the embedding cache, or the encoder once.

Split from :class:`~napari_samed2.engine.session.Session` because it reads only the volume,
the model and the cache, never prompts or memory: the tracker asks it for a frame's
:class:`~napari_samed2.engine.step.Features`, background encoding fills it ahead of the
tracker (:mod:`.prefetch`), and the cache keys it makes are what a cohort's ``embed`` task
writes beforehand.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from napari_samed2.engine.embedding_cache import EmbeddingCache
from napari_samed2.engine.prefetch import on_side_stream
from napari_samed2.engine.step import Features, features_from_backbone, position_encodings
from napari_samed2.engine.volume import Volume
from napari_samed2.models.loading import LoadedModel
from napari_samed2.models.temporal_adapter import encoder_pair, has_temporal_adapters


class SliceFeatures:
    """Image features of ``volume``'s frames under ``model``, kept in ``cache``.

    ``lock`` is the session's: the cache and the counters change only while it is held,
    the encoder itself runs outside it (see :meth:`prefetch`).
    """

    def __init__(self, model: LoadedModel, volume: Volume, cache: EmbeddingCache, lock: threading.RLock):
        self.model = model
        self.volume = volume
        self.cache = cache
        self.lock = lock
        self.paired = has_temporal_adapters(model.sam)
        self.model_key = model.feature_signature
        self.pos_embeds: list[torch.Tensor] | None = None
        self.frames_encoded = 0  # image-encoder runs, for tests and benchmarks

    def __getitem__(self, frame: int) -> Features:
        """The frame's features: from the cache, or the image encoder once (hold :attr:`lock`)."""
        sam = self.model.sam
        fpn = self.cache.get(self.cache_key(frame), self.model.device)
        if fpn is not None and self.pos_embeds is None:
            self.pos_embeds = [p[:1] for p in position_encodings(sam, fpn)]
        if fpn is None:
            fpn, pos_embeds = self.encode_batch([frame])
            self.frames_encoded += len(fpn)
            fpn = self._store(fpn, pos_embeds)[frame]
        return features_from_backbone(sam, fpn, self.pos_embeds)

    def encoder_input(self, frame: int) -> tuple[int, ...]:
        """The slices that go through the image encoder for ``frame``, in order: itself, or
        SAMed-2's pair (0, 1), (2, 3), ... (a last odd frame twice: it is paired with itself)."""
        return encoder_pair(frame, len(self.volume)) if self.paired else (frame,)

    def encoded_with(self, frame: int) -> tuple[int, ...]:
        """The frames whose features one encoder run for ``frame`` computes (its SAMed-2 partner
        too): :class:`~napari_samed2.engine.prefetch.Prefetcher` sizes its batches with it."""
        return tuple(dict.fromkeys(self.encoder_input(frame)))

    def encode_batch(self, frames: Sequence[int]) -> tuple[dict[int, list[torch.Tensor]], list[torch.Tensor]]:
        """Run the image encoder once for ``frames`` (one batch): FPN levels (``[1, C, H, W]``
        each) by frame, and the position encodings. It reads only the volume and the model,
        so it may run without :attr:`lock`.

        SAMed-2's temporal adapter mixes consecutive pairs of the batch, so each frame brings
        its pair, (0, 1), (2, 3), ..., and a pair asked for twice goes in once; a last odd
        frame is paired with itself (and keeps the second copy's features, as it always has).
        """
        images = [f for pair in dict.fromkeys(self.encoder_input(f) for f in frames) for f in pair]
        batch = torch.stack([self.model.input_for(self.volume, f) for f in images])
        backbone = self.model.sam.forward_image(batch.to(self.model.device))
        fpn = {f: [level[i : i + 1].clone() for level in backbone["backbone_fpn"]] for i, f in enumerate(images)}
        return fpn, [p[:1] for p in backbone["vision_pos_enc"]]

    def _store(self, fpn: dict[int, list[torch.Tensor]], pos_embeds: list[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
        """Put what :meth:`encode_batch` returned into the cache (the caller holds :attr:`lock`)."""
        self.pos_embeds = pos_embeds
        for f, features in fpn.items():
            self.cache.put(self.cache_key(f), features)
        return fpn

    def prefetch(self, frames: Sequence[int]) -> tuple[int, ...]:
        """Put the features of ``frames`` (checked frame numbers) into the cache, those not
        there already, with ONE encoder run; the frames whose features were kept (SAMed-2's
        partner slices too; none if all were cached).

        :attr:`lock` is held only to look into the cache and to put the features there, not
        while the encoder runs (~0.4 s a slice on a CPU), so a click or a propagation in
        another thread goes on meanwhile. A frame that one of those encodes first keeps its
        features: this run's copy is dropped, the same work done twice, never two versions in
        the cache. On CUDA the encoder runs on a side stream, finished before anything is
        put in the cache (see :func:`~napari_samed2.engine.prefetch.on_side_stream`).
        """
        keys = {f: self.cache_key(f) for f in frames}
        with self.lock:
            wanted = [f for f, key in keys.items() if key not in self.cache]
        if not wanted:
            return ()
        with self.model.inference():
            fpn, pos_embeds = on_side_stream(
                self.model.device,
                lambda: self.encode_batch(wanted),
                lambda out: [t for features in out[0].values() for t in features] + out[1],
            )
        keys.update((f, self.cache_key(f)) for f in fpn if f not in keys)
        with self.lock:
            self.frames_encoded += len(fpn)  # encoder runs, whether their features are kept or not
            kept = {f: features for f, features in fpn.items() if keys[f] not in self.cache}
            return tuple(self._store(kept, pos_embeds)) if kept else ()

    def cache_key(self, frame: int) -> str:
        """The embedding-cache key of ``frame``'s features: the model's feature signature and a
        digest of the frame's content and normalisation (and of its partner slice's, for
        SAMed-2's paired encoder)."""
        key = f"{self.model_key}-{self.volume.frame_key(frame)}"
        if self.paired:  # a slice's features depend on its partner's content too
            partner = min(frame ^ 1, len(self.volume) - 1)
            key += f"-{self.volume.frame_key(partner)}"
        return key

