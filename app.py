"""LMD demo app (Gradio): hide part of a photo and let an LMD model paint it back in.

Run it locally (binds to 127.0.0.1:7860; nothing is shared unless you pass --share):

    pip install -e ".[app]"
    python app.py                                # the shipped 64 px demo checkpoint, fully offline
    python app.py --model path/to/lmd-checkpoint # any LMDForPreTraining folder (or a Hub id, with network)

The same file is a Hugging Face Space's `app_file` (see spaces/README.md). The reconstruction itself is the plain
function `reconstruct` (no Gradio involved); `build_demo` wires it into the page and `main` parses the command line.
"""

from __future__ import annotations

import argparse
import logging
import numbers
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

# No usage statistics or version checks leave this machine (the app must also work offline).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import PIL.Image
import PIL.ImageOps

from modeling_lmd.image_processing_lmd import load_image_file, to_rgb_image
from modeling_lmd.mask_schedulers import check_mask_ratio
from modeling_lmd.pretrained import DEMO_LMD

logger = logging.getLogger("lmd_app")

#: Uploads above this many pixels are refused (decoding them would take seconds and gigabytes for a 64 px model).
MAX_PIXELS = 40_000_000
#: Uploads whose shorter side is below this are refused: there is nothing left to hide and fill in.
MIN_SIDE = 16
#: Photos keep their own size and aspect ratio; larger ones are shrunk to this longer side (the editor shows the
#: photo, and the result comes back at its size).
MAX_SIDE = 1024
#: The model's own output (64 px for the demo model) is enlarged to this size for display (nearest neighbour:
#: every model pixel stays a crisp square, nothing is invented by the upscaling).
DISPLAY_SIZE = 256
#: Uploads larger than this are refused by the web server before they reach Python.
MAX_UPLOAD_SIZE = "200mb"

MODE_RANDOM = "Random patches"
MODE_BRUSH = "Brush strokes (inpainting)"

#: The example photos: they ship inside scikit-image (`pip install scikit-image`), nothing is downloaded.
EXAMPLE_PHOTOS = {"astronaut": "Astronaut", "chelsea": "Cat (Chelsea)", "coffee": "Coffee cup"}


class PhotoError(ValueError):
    """A photo or mask the app cannot use; the message is written for the person using the page."""


# ----------------------------------------------------------------------------------------------------------------
# Plain functions: no Gradio in here, so they can be tested (and reused) without a browser.
# ----------------------------------------------------------------------------------------------------------------


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.path.basename(os.fspath(source))}'"
    return "the image"


def _open_image_file(path: str | os.PathLike, max_side: int) -> PIL.Image.Image:
    """Open an image file (its size checked from the header, before decoding the pixels), or a `PhotoError`."""
    try:
        image = load_image_file(path, max_pixels=MAX_PIXELS)  # MAX_PIXELS checked from the header
    except (FileNotFoundError, ValueError) as error:
        raise PhotoError(str(error)) from None
    _check_sides(image.width, image.height, _describe(path), max_side)
    return image


def _check_size(width: int, height: int, max_side: int, name: str = "the image") -> None:
    """For photos handed over decoded (PIL, numpy); files are checked by `load_image_file` as they open."""
    if width * height > MAX_PIXELS:
        raise PhotoError(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels): too large. "
            f"The limit is {MAX_PIXELS / 1e6:.0f} megapixels; please downscale it first "
            f"(the model works at a small size anyway)."
        )
    _check_sides(width, height, name, max_side)


def _check_sides(width: int, height: int, name: str, max_side: int) -> None:
    """The shorter side must be at least MIN_SIDE as the photo comes and also once `prepare_photo` has shrunk its
    longer side to `max_side`: checked on the photo as it comes, so that a 16 x 20,000 strip is refused at upload,
    not shrunk to 1 x 1,024 and refused at Reconstruct."""
    shorter, longer = sorted((width, height))
    if shorter < MIN_SIDE:
        raise PhotoError(
            f"{name} is only {width}x{height} pixels: too small. "
            f"Please use a photo of at least {MIN_SIDE}x{MIN_SIDE} pixels."
        )
    # Shrunk, the shorter side is shorter * max_side / longer (then rounded, which keeps it at MIN_SIDE or more).
    if shorter * max_side < MIN_SIDE * longer:
        needed = -(-MIN_SIDE * longer // max_side)  # the smallest whole shorter side that passes
        raise PhotoError(
            f"{name} is {width}x{height} pixels: too long and narrow. Photos are shrunk to {max_side} pixels on "
            f"their longer side, and the shorter side must stay at least {MIN_SIDE} pixels: with a longer side of "
            f"{longer} pixels, the shorter side must be at least {needed}. Please crop it first."
        )


def prepare_photo(source: Any, max_side: int = MAX_SIDE) -> PIL.Image.Image:
    """Any image (file path, PIL image, numpy array) -> an RGB photo at its own size (shrunk to `max_side` on its
    longer side if larger), or a `PhotoError`.

    Read as the pipeline and training read images (`to_rgb_image`): upright by its EXIF orientation, 16-bit scaled
    by 255 / 65535, floats in [0, 1], CMYK, grayscale and palette converted, transparent areas white. The brush
    mask is drawn on this photo, and the result comes back at its size.
    """
    if source is None:
        raise PhotoError("No photo yet: pick one of the example photos or upload your own.")
    if isinstance(source, (str, os.PathLike)):
        image = _open_image_file(source, max_side)
    elif isinstance(source, (PIL.Image.Image, np.ndarray)):
        width, height = (source.width, source.height) if isinstance(source, PIL.Image.Image) else (
            (source.shape[1], source.shape[0]) if source.ndim >= 2 else (0, 0))
        _check_size(width, height, max_side)
        image = source
    else:
        raise PhotoError(f"Unsupported photo type {type(source).__name__}; upload an image file.")
    try:
        image = to_rgb_image(image)
    except (ValueError, TypeError) as error:
        raise PhotoError(f"{_describe(source)} could not be converted to an RGB photo: {error}") from None
    if max(image.size) > max_side:
        image = PIL.ImageOps.contain(image, (max_side, max_side), method=PIL.Image.Resampling.LANCZOS)
    return image


def brush_mask(layers: list[Any] | None, size: tuple[int, int]) -> np.ndarray:
    """Brush layers (RGBA arrays or PIL images; painted = alpha > 0) -> a boolean `(height, width)` mask.

    `size` is the photo's `(width, height)`; layers of another size (a resized canvas) are scaled to it.
    """
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        array = np.asarray(layer.convert("RGBA") if isinstance(layer, PIL.Image.Image) else layer)
        if array.ndim == 3 and array.shape[-1] == 4:
            painted = array[..., 3] > 0
        elif array.ndim == 3:
            painted = array.any(axis=-1)
        elif array.ndim == 2:
            painted = array > 0
        else:
            raise PhotoError(f"Unexpected brush layer of shape {array.shape}.")
        if painted.shape != (height, width):
            painted = np.asarray(
                PIL.Image.fromarray(painted).resize((width, height), resample=PIL.Image.Resampling.NEAREST)
            )
        mask |= painted
    return mask


@dataclass
class Reconstruction:
    """What the page shows, and a one-line summary."""

    masked_image: PIL.Image.Image  # the photo with the region to fill in mid-grey (the photo's size)
    decoded: PIL.Image.Image  # everything the model drew for the square it saw, enlarged (the model's own output)
    reconstruction: PIL.Image.Image  # the photo at its size: the model's fill in the region, the photo elsewhere
    hidden_patches: int
    total_patches: int
    seconds: float

    @property
    def summary(self) -> str:
        share = self.hidden_patches / self.total_patches
        return (f"Done in {self.seconds:.1f} s: {self.hidden_patches} of {self.total_patches} patches "
                f"({share:.0%}) were hidden and filled in by the model.")


def _whole_number(value: Any, name: str) -> int:
    """`value` as an int, or a `PhotoError`: Gradio's number boxes give whole floats (3.0), and 1.9 is never read
    as 1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PhotoError(f"{name} must be a whole number, got {value!r}.")
    return int(value)


def _enlarge(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    return image.resize((size, size), resample=PIL.Image.Resampling.NEAREST)


def fill_photo(pipe, photo: Any, *, mode: str = "random", mask_ratio: float = 0.5, seed: int = 0,
                num_inference_steps: int = 1, mask: np.ndarray | None = None,
                display_size: int = DISPLAY_SIZE) -> Reconstruction:
    """Hide part of `photo` and let the LMD pipeline `pipe` fill it in.

    Args:
        pipe: an `"lmd-reconstruction"` pipeline (see `load_pipeline`).
        photo: a file path, PIL image or numpy array (checked and converted by `prepare_photo`).
        mode: `"random"` hides a random `mask_ratio` share of the latent patches of the photo's centred square
            (drawn from `seed`); `"brush"` fills in the boolean `mask` (over the prepared photo's pixels), the
            model seeing a square around it.
        num_inference_steps: 1 fills everything at once; more reveals the hidden patches progressively.

    Raises `PhotoError` (a `ValueError`) with a message for the page when the inputs cannot be used.
    """
    mode = {MODE_RANDOM: "random", MODE_BRUSH: "brush"}.get(mode, mode)
    if mode not in ("random", "brush"):
        raise PhotoError(f"Unknown mode {mode!r}; use 'random' or 'brush'.")
    steps, seed = _whole_number(num_inference_steps, "num_inference_steps"), _whole_number(seed, "The seed")
    if not 1 <= steps <= 8:
        raise PhotoError(f"num_inference_steps must be between 1 and 8, got {steps}.")
    if seed < 0:
        raise PhotoError(f"The seed must be 0 or more, got {seed}.")
    image = prepare_photo(photo)
    start = time.perf_counter()
    try:
        if mode == "random":
            check_mask_ratio(mask_ratio, "The share to hide")  # a ValueError becomes a PhotoError below
            out = pipe(image, mask_ratio=float(mask_ratio), seed=seed, num_inference_steps=steps)
        else:
            if mask is None or not np.asarray(mask).any():
                raise PhotoError(
                    "Nothing is painted yet: in brush mode, paint over the part of the photo to hide "
                    "(or switch to random patches)."
                )
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (image.height, image.width):
                mask = np.asarray(PIL.Image.fromarray(mask).resize(image.size, PIL.Image.Resampling.NEAREST))
            out = pipe(image, mask=mask, seed=seed, num_inference_steps=steps)
    except PhotoError:
        raise
    except (ValueError, TypeError) as error:  # the pipeline's own checks, e.g. a mask that hides everything
        raise PhotoError(str(error)) from None
    seconds = time.perf_counter() - start
    patch_mask = np.asarray(out["patch_mask"])
    return Reconstruction(
        # What is hidden from the model: mid-grey pasted into the region, as the pipeline pastes its fill.
        masked_image=pipe.image_processor.paste_fill(image, PIL.Image.new("RGB", (1, 1), (128, 128, 128)),
                                                     out["crop_box"], out["mask"], blend_width=0),
        decoded=_enlarge(out["model_decoded"], display_size),
        reconstruction=out["reconstruction"],
        hidden_patches=int(patch_mask.sum()),
        total_patches=int(patch_mask.size),
        seconds=seconds,
    )


def load_pipeline(model_name_or_path: str | os.PathLike = DEMO_LMD, device: str | None = None):
    """The `"lmd-reconstruction"` pipeline for an LMD pre-training checkpoint (a folder or a Hub id), on `device`
    (default: the first accelerator when present, else the CPU)."""
    from transformers import pipeline

    import modeling_lmd  # registers the task and the Auto classes

    # The pipeline class from this package, so no remote code is needed for any checkpoint.
    return pipeline("lmd-reconstruction", model=os.fspath(model_name_or_path),
                    pipeline_class=modeling_lmd.LMDReconstructionPipeline, device=device)


def example_photo_paths(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """Write the scikit-image example photos as PNGs (once) and return {label: path}."""
    import skimage.data

    folder = os.fspath(folder or os.path.join(tempfile.gettempdir(), "lmd_app_examples"))
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, label in EXAMPLE_PHOTOS.items():
        path = os.path.join(folder, f"{name}.png")
        if not os.path.isfile(path):
            partial = f"{path}.{os.getpid()}.png"  # written whole, then renamed: safe with several apps at once
            prepare_photo(getattr(skimage.data, name)()).save(partial)
            os.replace(partial, path)
        paths[label] = path
    return paths


# ----------------------------------------------------------------------------------------------------------------
# The page.
# ----------------------------------------------------------------------------------------------------------------

INTRO = """\
# LMD: fill in the hidden parts of a photo

An LMD model sees a photo with some of its patches hidden and paints them back in from what is still visible.
The model works on **{size}x{size}-pixel** squares: it sees a square of the photo (around what you paint, or the
centre for random patches), shrunk to that size, and its fill is pasted back into the photo at the photo's own size.

**1.** Pick an example photo or upload your own. &nbsp; **2.** Choose what to hide: random patches, or paint over
a region with the brush. &nbsp; **3.** Press **Reconstruct**.
"""

CSS = """
#lmd-status textarea { font-size: 0.95rem; }
.lmd-result img { image-rendering: pixelated; }
"""


def _editor_value(photo: PIL.Image.Image) -> dict:
    return {"background": photo, "layers": [], "composite": photo}


NO_PHOTO = "No photo yet: pick one of the example photos or upload your own."


def run_from_editor(pipe, editor: dict | None, mode: str, mask_ratio: float, seed: int, steps: int):
    """What the Reconstruct button does, minus Gradio: the editor's value (background photo + brush layers) and the
    controls -> `(Reconstruction or None, message)`. Never raises: every problem becomes the message."""
    background = editor.get("background") if editor else None
    if background is None or (isinstance(background, np.ndarray) and background.ndim == 3
                              and background.shape[-1] == 4 and not background[..., 3].any()):
        return None, NO_PHOTO  # nothing loaded (an empty canvas is fully transparent)
    try:
        photo = prepare_photo(background)
        strokes = brush_mask(editor.get("layers"), photo.size)
        result = fill_photo(pipe, photo, mode=mode, mask_ratio=mask_ratio, seed=seed, num_inference_steps=steps,
                             mask=strokes if mode in (MODE_BRUSH, "brush") else None)
    except PhotoError as error:
        return None, str(error)
    except Exception as error:  # never a traceback in the page; the log keeps it
        logger.exception("reconstruction failed")
        return None, f"The reconstruction failed: {type(error).__name__}: {error}"
    message = result.summary
    if mode not in (MODE_BRUSH, "brush") and strokes.any():
        message += f" Your brush strokes were not used: choose '{MODE_BRUSH}' to hide what you painted."
    return result, message


def photo_from_upload(path: str | os.PathLike | None):
    """What an upload does, minus Gradio: a file -> `(photo or None, message)`. Never raises."""
    try:
        photo = prepare_photo(path)
    except PhotoError as error:
        return None, str(error)
    except Exception as error:  # never a traceback in the page; the log keeps it
        logger.exception("upload failed")
        return None, f"Could not use this file: {type(error).__name__}: {error}"
    return photo, f"Loaded {os.path.basename(os.fspath(path))}. Now choose what to hide and press Reconstruct."


def _photo_inputs(gr, examples: dict[str, str]):
    """The photo editor (with the example photos under it) and the upload box."""
    editor = gr.ImageEditor(
        value=_editor_value(prepare_photo(next(iter(examples.values())))),
        label="Photo (in brush mode: paint over what to hide)", type="numpy", image_mode="RGBA",
        sources=[], transforms=[], layers=False, format="png", canvas_size=(512, 512),
        height=460, elem_id="lmd-editor",
        brush=gr.Brush(colors=["#ff00c8"], default_color="#ff00c8", color_mode="fixed", default_size=28),
        eraser=gr.Eraser(default_size=28),
    )
    gr.Examples(examples=[[path] for path in examples.values()], inputs=[editor], label="Example photos (click one)")
    upload = gr.File(label="...or upload your own photo (PNG, JPEG, WebP, TIFF, BMP; up to 40 megapixels)",
                     type="filepath", height=150, elem_id="lmd-upload")
    return editor, upload


def _result_images(gr, size: int):
    """The three result images, under a line that says what each shows."""
    gr.Markdown("### Result\n"
                "Left: the photo with the region to fill in grey. Middle: everything the model drew for the "
                f"square it saw ({size}x{size} pixels, enlarged). Right: the photo at its own size, the model's "
                "drawing in the grey region (faded in over a few pixels inside its edge) and the photo's own "
                "pixels, untouched, everywhere else.")
    with gr.Row():
        common = {"type": "pil", "format": "png", "interactive": False, "height": DISPLAY_SIZE + 80,
                  "elem_classes": ["lmd-result"]}
        return (gr.Image(label="Photo (grey = to fill in)", elem_id="lmd-masked", **common),
                gr.Image(label="What the model drew (its square, enlarged)", elem_id="lmd-decoded", **common),
                gr.Image(label="Result at the photo's size", elem_id="lmd-pasted", **common))


def build_demo(model_name_or_path: str | os.PathLike = DEMO_LMD, *, pipe=None):
    """The Gradio page for the checkpoint `model_name_or_path` (or an already built `pipe` of it)."""
    import gradio as gr

    if pipe is None:
        pipe = load_pipeline(model_name_or_path)
    is_demo_model = os.path.abspath(os.fspath(model_name_or_path)) == os.path.abspath(DEMO_LMD)
    model_label = "the shipped demo checkpoint" if is_demo_model else f"{model_name_or_path}"
    examples = example_photo_paths()
    size = pipe.model.config.image_size  # the model's input side, in pixels
    cell = pipe.model.config.patch_pixels  # one latent patch, in pixels

    def on_upload(path):
        # Outputs: editor, the three results, status, the upload box (reset so that the next file can be dropped).
        if not path:
            return (gr.skip(),) * 6
        photo, message = photo_from_upload(path)
        if photo is None:
            gr.Warning(message)
            return *(gr.skip(),) * 4, message, None
        return _editor_value(photo), None, None, None, message, None

    def on_run(editor, mode, mask_ratio, seed, steps):
        result, message = run_from_editor(pipe, editor, mode, mask_ratio, seed, steps)
        if result is None:
            gr.Warning(message)
            return None, None, None, message
        return result.masked_image, result.decoded, result.reconstruction, message

    def on_mode(mode):
        return gr.update(visible=mode == MODE_RANDOM), gr.update(visible=mode == MODE_BRUSH)

    with gr.Blocks(title="LMD: fill in hidden parts of a photo") as demo:
        gr.Markdown(INTRO.format(size=size))
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                editor, upload = _photo_inputs(gr, examples)
            with gr.Column(scale=2):
                mode = gr.Radio([MODE_RANDOM, MODE_BRUSH], value=MODE_RANDOM, label="What to hide",
                                elem_id="lmd-mode")
                with gr.Group(visible=True) as random_controls:
                    mask_ratio = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Share of the square to hide",
                                           info=f"Random {cell}x{cell}-pixel patches of the photo's centred square, "
                                                f"seen at {size}x{size}.",
                                           elem_id="lmd-mask-ratio")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed",
                                     info="The same seed hides the same patches.", elem_id="lmd-seed")
                brush_help = gr.Markdown(
                    "Paint over the region to fill in with the pink brush (the eraser takes strokes back). The model "
                    f"sees a square around it at {size}x{size}; every {cell}x{cell}-pixel patch of that square that "
                    "your strokes touch is hidden from it.",
                    visible=False,
                )
                steps = gr.Slider(1, 8, value=1, step=1, label="num_inference_steps",
                                  info="1 fills all hidden patches at once; more steps reveal them progressively "
                                       "(slower).", elem_id="lmd-steps")
                run = gr.Button("Reconstruct", variant="primary", elem_id="lmd-run")
                status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="lmd-status",
                                    value=f"Model: {model_label}. Press Reconstruct, or pick another photo first.")
        masked_out, decoded_out, pasted_out = _result_images(gr, size)

        mode.change(on_mode, inputs=mode, outputs=[random_controls, brush_help])
        # Progress shows on the status box only: an editor that a failed upload leaves alone keeps its photo.
        upload.upload(on_upload, inputs=upload, outputs=[editor, masked_out, decoded_out, pasted_out, status, upload],
                      show_progress_on=[status])
        run.click(on_run, inputs=[editor, mode, mask_ratio, seed, steps],
                  outputs=[masked_out, decoded_out, pasted_out, status])
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LMD demo app: hide part of a photo and let the model fill it in.")
    parser.add_argument("--model", default=DEMO_LMD,
                        help="LMD pre-training checkpoint: a folder or a Hub id (default: the shipped demo model).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="Address to bind (default 127.0.0.1, this machine only; Spaces set 0.0.0.0).")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="Port (default 7860).")
    parser.add_argument("--share", action="store_true",
                        help="Also create a public gradio.live link (off by default).")
    parser.add_argument("--device", default=None,
                        help="Where the model runs: cpu, cuda, cuda:1, mps, ... (default: cuda when present).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not every request gradio makes to itself
    try:
        pipe = load_pipeline(args.model, args.device)
    except Exception as error:  # noqa: BLE001  (any loading failure becomes a one-line message)
        print(f"error: could not load the LMD checkpoint {args.model!r}: {error}", file=sys.stderr)
        return 2
    demo = build_demo(args.model, pipe=pipe)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS,
                max_file_size=MAX_UPLOAD_SIZE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
