"""`evaluate`: sample a model on a prompt set, extract features, and measure it.

Shapes world (the default): the reference is N scenes of the generator drawn from an
evaluation seed stream (never the training seeds), and the prompts are those scenes' captions,
so real and generated sets share one caption distribution (as COCO evaluations pair captions
with their photos). Features come from the shapes feature network; its heads give the
attribute accuracy. Real models: --prompt-file, --real-images and a local --inception file
(and --clip for CLIP score), all images under GigaGAN's protocol (docs/evaluation.md).
Images are written to disk as they are made and read back batch by batch for features.

Image i is seeded with seed + i whatever the batch size or number of processes, so a sharded
run (torchrun / accelerate launch) gives the same numbers as a single process.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tiue.eval.agreement import attribute_accuracy, clip_score
from tiue.eval.fid import fid_from_features
from tiue.eval.knn_metrics import f1_score, prdc
from tiue.eval.sharding import ProcessGroup
from tiue.schedule import TIMESTEP_SPACINGS

__all__ = ["EvalSpec", "evaluate", "measure", "reference_metrics", "sample_images", "reference_scenes", "REFERENCE_SEED_OFFSET", "METRIC_KEYS",
           "MAX_NUM_IMAGES", "check_inputs"]

# Evaluation scenes come from seeds offset by this, far from the recipes' training seeds.
REFERENCE_SEED_OFFSET = 1_000_003
METRIC_KEYS = ("fid", "precision", "recall", "f1", "density", "coverage", "accuracy", "seconds_per_image")
MODES = ("loopfree", "loop")
# 20x the paper's 30K: beyond it, features alone pass 8 GB and PRDC's distances ~10^12 per set.
MAX_NUM_IMAGES = 1_000_000


@dataclass
class EvalSpec:
    model: str
    steps: int = 4
    mode: str = "loopfree"
    guidance_scale: float | None = None  # classifier-free guidance (both modes); None: the pipeline's default, 1
    timestep_spacing: str | None = None  # None: the model scheduler's own
    num_images: int = 256
    seed: int = 0
    batch_size: int = 64
    prompt_file: Path | None = None
    real_images: Path | None = None
    features: Path | None = None  # shapes feature network folder (default: embedded)
    inception: Path | None = None
    clip: Path | None = None
    nearest_k: int = 5
    device: str | None = None
    dtype: str | None = None
    out_dir: Path | None = None  # generated images (resume from them); None: a temporary folder
    cache_dir: Path | None = None  # real-image features; None: ~/.cache/tiue/eval, Path("none"): no cache
    fid_protocol: str = "clean"  # Inception only: clean-fid "clean" (the paper's) or "legacy_tensorflow"
    kid: bool = True
    progress: bool = True

    def check(self) -> None:
        checks = [
            ("--steps", self.steps, self.steps >= 1, "an integer >= 1"),
            ("--nearest-k", self.nearest_k, 1 <= self.nearest_k < MAX_NUM_IMAGES,
             f"an integer from 1 to {MAX_NUM_IMAGES - 1:,} (the k of the k-NN balls)"),
            ("--num-images", self.num_images, self.nearest_k < self.num_images <= MAX_NUM_IMAGES,
             f"an integer from k + 1 = {self.nearest_k + 1} to {MAX_NUM_IMAGES:,} (features and k-NN distances grow with N)"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, "an integer >= 1"),
            ("--mode", self.mode, self.mode in MODES, " or ".join(MODES)),
            ("--seed", self.seed, 0 <= self.seed <= 2**63 - self.num_images, "0 <= seed <= 2**63 - num_images (image i uses seed + i)"),
            ("--timestep-spacing", self.timestep_spacing, self.timestep_spacing in (None, *TIMESTEP_SPACINGS),
             " or ".join(TIMESTEP_SPACINGS)),
        ]
        for flag, value, ok, accepted in checks:
            if not ok:
                raise ValueError(f"{flag}: expected {accepted}, got {value!r}")
        if self.guidance_scale is not None and not 1.0 <= self.guidance_scale < float("inf"):  # also refuses NaN
            raise ValueError(f"--guidance-scale: expected a finite value >= 1 (1 means no guidance), got {self.guidance_scale}")
        from tiue.eval.extractors import FID_PROTOCOLS

        if self.fid_protocol not in FID_PROTOCOLS:
            raise ValueError(f"--fid-protocol: expected {' or '.join(FID_PROTOCOLS)}, got {self.fid_protocol!r}")
        if self.prompt_file is not None and self.real_images is None:
            raise ValueError("--real-images: required with --prompt-file (the folder of real images to compare with)")
        if self.prompt_file is not None and self.inception is None and self.features is None:
            from tiue.eval.extractors import INCEPTION_URL

            raise ValueError(
                "--inception: required with --prompt-file (real models): FID, KID and PRDC need the local TorchScript "
                f"Inception file inception-2015-12-05.pt ({INCEPTION_URL}), passed as --inception PATH "
                "(docs/evaluation.md); the shapes feature network measures shapes-world models only (name it with "
                "--features to use it on one)"
            )


def reference_scenes(num_images: int, seed: int, resolution: int = 32):
    """The evaluation's real scenes (and so its prompts) for `seed`."""
    from tiue.data.shapes import WorldConfig, generate

    return generate(num_images, REFERENCE_SEED_OFFSET + seed, WorldConfig(resolution=resolution))


def _to_uint8(images: np.ndarray) -> np.ndarray:
    # As diffusers' numpy_to_pil rounds, so saved PNGs and measured arrays agree.
    return (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)


def sample_images(pipe, prompts: list[str], indices, spec: EvalSpec) -> np.ndarray:
    """Images (len(indices), H, W, 3) uint8 for prompts[i], i in indices, image i seeded seed + i."""
    indices = list(indices)
    out = []
    for start in range(0, len(indices), spec.batch_size):
        batch = indices[start : start + spec.batch_size]
        texts = [prompts[i] for i in batch]
        generators = [torch.Generator(pipe.device).manual_seed(spec.seed + i) for i in batch]
        guidance = {} if spec.guidance_scale is None else {"guidance_scale": spec.guidance_scale}
        images = pipe(texts, num_inference_steps=spec.steps, generator=generators, output_type="np", mode=spec.mode,
                      **guidance).images
        out.append(_to_uint8(images))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def _read_prompt_file(path: Path, num_images: int) -> list[str]:
    if not path.is_file():
        raise ValueError(f"--prompt-file: no such file: {path}")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--prompt-file: cannot read {path} as UTF-8 text ({error})") from error
    if not prompts:
        raise ValueError(f"--prompt-file: no prompts in {path}")
    # Cycle through the file: image i uses prompt i mod len(prompts) (n images per prompt).
    return [prompts[i % len(prompts)] for i in range(num_images)]


def check_inputs(spec: EvalSpec) -> list[str] | None:
    """Every input and output of the run checked before the model loads: the prompt file (its
    prompts are returned; None in the shapes world), the weights files and folders, the real
    images (listed by clean-fid's rule; each header read unless their features are cached),
    and the output folders. One line naming the flag on the first problem."""
    from tiue.eval.preprocessing import check_image_files, list_image_files
    from tiue.eval.reference_cache import cache_file
    from tiue.files import check_writable_folder

    if spec.inception is not None and not Path(spec.inception).is_file():
        from tiue.eval.extractors import INCEPTION_URL

        raise ValueError(f"--inception: no such file: {spec.inception}; expected a local TorchScript Inception "
                         f"(inception-2015-12-05.pt, downloadable from {INCEPTION_URL}; docs/evaluation.md)")
    for flag, folder in (("--clip", spec.clip), ("--features", spec.features)):
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise ValueError(f"{flag}: expected a local model folder with a config.json, got {folder}")
    if spec.out_dir is not None:
        check_writable_folder("--out-dir", spec.out_dir)
    if spec.prompt_file is None:
        return None  # the shapes world: no real-image folder, no feature cache
    cache_dir = _cache_dir(spec)
    if cache_dir is not None:
        check_writable_folder("--cache-dir", cache_dir)
    prompts = _read_prompt_file(spec.prompt_file, spec.num_images)
    paths = list_image_files(spec.real_images, "--real-images")
    cached = cache_file(paths, _reference_identity(spec), cache_dir)
    if cached is None or not cached.is_file():
        check_image_files(paths, "--real-images")
    return prompts


def _cache_dir(spec: EvalSpec) -> Path | None:
    from tiue.eval.reference_cache import default_cache_dir

    return None if spec.cache_dir == Path("none") else (spec.cache_dir or default_cache_dir())


def _reference_identity(spec: EvalSpec) -> str:
    """What the cached real-image features depend on besides the files: extractor and preprocessing."""
    from tiue.eval.reference_cache import file_fingerprint

    if spec.inception is not None:
        name = "inception" if spec.fid_protocol == "clean" else f"inception-{spec.fid_protocol}"
        return f"{name}|{file_fingerprint(spec.inception)}|gigagan-256"
    return f"shapes|{file_fingerprint(spec.features)}|world"


def _check_steps(pipe, steps: int) -> None:
    """--steps against the model's own schedule (its training timesteps), before any sampling."""
    from tiue.schedule import ddim_timesteps

    try:
        ddim_timesteps(pipe.scheduler, steps)
    except ValueError as error:
        raise ValueError(f"--steps: {error}") from None


def _gigagan_image(image) -> np.ndarray:
    from tiue.eval.preprocessing import center_crop_resize

    return center_crop_resize(image)


def _build_extractors(spec: EvalSpec, device, resolution: int):
    """Every feature extractor of the run, each tried on one image before any sampling, so a
    missing or wrong weights file fails in seconds rather than after hours of sampling.
    `resolution`: the model's image side."""
    from tiue.eval.extractors import ClipModel, InceptionFeatures, load_shapes_features
    from tiue.eval.preprocessing import GIGAGAN_SIZE

    if spec.inception:
        extractor = InceptionFeatures(spec.inception, device, spec.batch_size, protocol=spec.fid_protocol)
        side = GIGAGAN_SIZE
    else:
        extractor = load_shapes_features(spec.features)
        side = extractor.network.config.resolution
        if resolution != side:
            raise ValueError(
                f"--model: {spec.model} makes {resolution} px images, and the shapes feature network (--features) reads "
                f"{side} px shapes-world images: it measures shapes models only; for other models pass --prompt-file, "
                "--real-images and --inception (docs/evaluation.md)"
            )
    clip = ClipModel(spec.clip, device) if spec.clip else None
    probe = np.zeros((1, side, side, 3), np.uint8)
    for flag, check in (("--inception" if spec.inception else "--features", lambda: extractor.features(probe)),
                        ("--clip", lambda: clip and (clip.image_embeddings(probe), clip.text_embeddings(["a photo"])))):
        try:
            check()
        except Exception as error:  # report which flag's model failed, with the cause
            raise ValueError(f"{flag}: the model failed on a test image before sampling: {error}") from error
    return extractor, clip


def _sample_to_store(pipe, prompts, indices, spec: EvalSpec, store, progress: bool) -> tuple[float, int, int | None]:
    """Sample the images of `indices` not yet in `store`, writing each batch as it is made.
    Returns (sampling seconds, images sampled, peak CUDA bytes while sampling: Table 1's memory
    column, None off CUDA)."""
    from tqdm import tqdm

    todo = store.missing(indices)
    if not todo:
        return 0.0, 0, None
    on_cuda = torch.device(pipe.device).type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(pipe.device)
    # Untimed warm-up: the first call pays one-time allocation and dispatch costs.
    sample_images(pipe, prompts, [todo[0]], spec)
    seconds = 0.0
    with tqdm(total=len(todo), desc="sampling", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), spec.batch_size):
            batch = todo[start : start + spec.batch_size]
            began = time.perf_counter()
            images = sample_images(pipe, prompts, batch, spec)
            seconds += time.perf_counter() - began
            for i, image in zip(batch, images):
                store.write(i, image)
            bar.update(len(batch))
    peak = torch.cuda.max_memory_allocated(pipe.device) if on_cuda else None
    return seconds, len(todo), peak


def _extract(store, indices, extractor, clip, progress: bool) -> dict:
    """Features (and shapes-head predictions, CLIP image embeddings) of stored images, read
    back in the extractor's own batch size: only one batch of images is ever in memory."""
    from tqdm import tqdm

    from tiue.eval.preprocessing import gigagan_clip_pixels

    indices = list(indices)
    shapes = extractor.name == "shapes"
    step = extractor.batch_size
    features, predictions, clip_images = [], {}, []
    for start in tqdm(range(0, len(indices), step), desc="features", unit="batch", disable=not progress):
        batch = indices[start : start + step]
        if shapes:
            f, p = extractor.features_and_predictions(store.read(batch))
            features.append(f)
            for name, value in p.items():
                predictions.setdefault(name, []).append(value)
        else:
            # GigaGAN's protocol for Inception/CLIP: centre crop, Lanczos to 256.
            prepared = np.stack([_gigagan_image(store.open(i)) for i in batch])
            features.append(extractor.features(prepared))
            if clip is not None:
                clip_images.append(clip.image_embeddings(gigagan_clip_pixels(prepared)))
    part = {"indices": indices, "features": np.concatenate(features) if features else None}
    if predictions:
        part["predictions"] = {k: np.concatenate(v) for k, v in predictions.items()}
    if clip_images:
        part["clip_images"] = np.concatenate(clip_images)
    return part


def evaluate(spec: EvalSpec, group: ProcessGroup | None = None) -> dict | None:
    """The metrics (on rank 0; None on other ranks). Keys: METRIC_KEYS plus details.

    Images go to spec.out_dir (a temporary folder when None) as they are made; a rerun with
    the same out_dir samples only the missing ones. Memory holds one batch of images, the
    (N, D) features, and block_size x N distances for PRDC.
    """
    import tempfile

    from tiue.eval.image_store import MODEL_FINGERPRINT_KEY, ImageStore, model_fingerprint
    from tiue.eval.kid import kernel_inception_distance
    from tiue.eval.reference_cache import folder_features
    from tiue.sampling import load_pipeline

    spec.check()
    prompts = check_inputs(spec)  # before the model loads
    group = group or ProcessGroup.from_environment()
    progress = group.is_main and spec.progress
    pipe = load_pipeline(spec.model, spec.device, spec.dtype).with_timestep_spacing(spec.timestep_spacing)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    _check_steps(pipe, spec.steps)

    real_world = spec.prompt_file is not None
    extractor, clip = _build_extractors(spec, pipe.device, resolution)
    if not real_world:
        reference = reference_scenes(spec.num_images, spec.seed, resolution)
        prompts = reference.captions
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()}
    temporary = None
    if spec.out_dir is None:
        # Every rank must write to the same folder: rank 0 names it.
        temporary = tempfile.TemporaryDirectory(prefix="tiue-eval-") if group.is_main else None
        folder = group.gather(temporary.name if temporary else None)[0]
    else:
        folder = spec.out_dir
    try:
        store = ImageStore(folder)
        sampling_keys = ("model", "steps", "mode", "guidance_scale", "timestep_spacing", "seed", "prompt_file", "device", "dtype")
        if group.is_main:
            store.claim({**{k: settings[k] for k in sampling_keys}, MODEL_FINGERPRINT_KEY: model_fingerprint(spec.model)})
        group.barrier()
        mine = group.shard(spec.num_images)
        seconds, sampled, peak_bytes = _sample_to_store(pipe, prompts, mine, spec, store, progress)
        part = _extract(store, mine, extractor, clip, progress)
        part.update(seconds=seconds, sampled=sampled, peak_bytes=peak_bytes)
        parts = group.gather(part)
    finally:
        # gather() returned on every rank, so every rank is done reading the images.
        if temporary is not None:
            temporary.cleanup()
    if not group.is_main:
        return None

    order = np.argsort(np.concatenate([p["indices"] for p in parts]))
    generated = np.concatenate([p["features"] for p in parts])[order]
    if real_world:
        shapes = extractor.name == "shapes"
        # The shapes network reads the GigaGAN 256 px image resized to the world's size, as before.
        prepare = (lambda im: _resize_for(_gigagan_image(im)[None], resolution)[0]) if shapes else _gigagan_image
        real = folder_features(spec.real_images, extractor.features, prepare, _reference_identity(spec), _cache_dir(spec),
                               spec.batch_size, progress=progress)
    else:
        real = extractor.features(reference.images)
    predictions = None
    if "predictions" in parts[0]:
        predictions = {k: np.concatenate([p["predictions"][k] for p in parts])[order] for k in parts[0]["predictions"]}
    result = measure(real, generated, prompts, predictions, spec.nearest_k)
    sampled = sum(p["sampled"] for p in parts)
    # Resumed images were timed by an earlier run: time only this run's.
    result["seconds_per_image"] = sum(p["seconds"] for p in parts) / sampled if sampled else None
    peaks = [p["peak_bytes"] for p in parts if p["peak_bytes"] is not None]
    # Table 1's memory column: the largest process's peak allocated CUDA memory while sampling
    # (weights included), in GB; None on CPU.
    result["sampling_memory_gb"] = max(peaks) / 1e9 if peaks else None
    if spec.kid and spec.inception is not None:
        # KID's cubic kernel assumes Inception-scaled features; on the shapes network's
        # unnormalised 64-d features it is dominated by their magnitude, so it is not reported.
        result["kid"] = kernel_inception_distance(real, generated)
    if clip is not None:
        image_embeddings = np.concatenate([p["clip_images"] for p in parts])[order]
        result["clip_score"] = clip_score(image_embeddings, clip.text_embeddings(prompts))
        result["clip_model"] = clip.model_name
    result.update(
        num_images=spec.num_images,
        num_sampled=sampled,
        num_real=int(len(real)),
        num_processes=group.world_size,
        feature_extractor=extractor.name,
        device=str(pipe.device),
        torch_threads=torch.get_num_threads(),
        settings=settings,
    )
    return result


def measure(real: np.ndarray, generated: np.ndarray, prompts: list[str], predictions: dict | None, nearest_k: int = 5) -> dict:
    """Every metric of METRIC_KEYS but time, from features (and the shapes heads' readings)."""
    pr = prdc(real, generated, nearest_k)
    result = {
        "fid": fid_from_features(real, generated),
        "precision": pr["precision"],
        "recall": pr["recall"],
        "f1": f1_score(pr["precision"], pr["recall"]),
        "density": pr["density"],
        "coverage": pr["coverage"],
        "accuracy": None,
        "seconds_per_image": None,
    }
    if predictions is not None:
        try:
            result.update(attribute_accuracy(prompts, predictions))
        except ValueError:
            pass  # prompts outside the shapes world: no attribute accuracy
    return result


def reference_metrics(num_images: int, seed: int = 0, features: Path | None = None, nearest_k: int = 5) -> dict:
    """The metrics of the generator itself: fresh right answers to the evaluation's prompts
    (scene_for_caption), measured against the evaluation's reference scenes. The floor a
    perfect model would reach at this N: FID is biased upwards at small N."""
    from tiue.data.shapes import scene_for_caption
    from tiue.eval.extractors import load_shapes_features

    extractor = load_shapes_features(features)
    reference = reference_scenes(num_images, seed)
    answers = np.stack([scene_for_caption(c, REFERENCE_SEED_OFFSET + seed, i).image for i, c in enumerate(reference.captions)])
    generated, predictions = extractor.features_and_predictions(answers)
    return measure(extractor.features(reference.images), generated, reference.captions, predictions, nearest_k)


def _resize_for(images: np.ndarray, resolution: int) -> np.ndarray:
    from PIL import Image

    if images.shape[1:3] == (resolution, resolution):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.LANCZOS)) for im in images])
