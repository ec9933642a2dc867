"""What a run reads and writes at its edges: reference images, prompts the prior cannot read, file modes."""

import os
import warnings

import numpy as np
import pytest
import torch

from dream3d.config import load_run_config
from dream3d.pipeline import load_reference_image


def _png(path, rgba):
    import imageio.v3 as iio

    iio.imwrite(path, rgba)
    return str(path)


def test_a_wide_image_is_padded_not_stretched(tmp_path):
    img = np.zeros((40, 80, 4), np.uint8)
    img[10:30, 30:50] = (255, 0, 0, 255)  # a 20x20 red square in a 40x80 image
    rgb, mask = load_reference_image(_png(tmp_path / "wide.png", img), 40)
    ys, xs = torch.nonzero(mask[0, ..., 0] > 0.5, as_tuple=True)
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    assert abs(h - w) <= 1 and 9 <= w <= 11  # still square, half size (80 px -> 40 px), not 20x10
    assert abs(float(ys.float().mean()) - 19.5) < 1 and abs(float(xs.float().mean()) - 19.5) < 1  # centred
    assert float(rgb[0, 2, 20].min()) > 0.99  # the padding is white background


def test_grey_with_alpha_is_read(tmp_path):
    img = np.zeros((16, 16, 2), np.uint8)
    img[4:12, 4:12] = (128, 255)
    rgb, mask = load_reference_image(_png(tmp_path / "la.png", img), 16)
    assert float(mask.sum()) == pytest.approx(64, abs=1)
    assert torch.allclose(rgb[0, 8, 8], torch.full((3,), 128 / 255), atol=1e-3)


def test_prompts_outside_the_embedded_priors_world_are_warned_about(tiny_prior, tmp_path):
    """The embedded prior ships the prompts it knows (vocabulary.json beside its weights); a model folder without
    that file (any real checkpoint) warns about nothing."""
    from dream3d.guidance.prior import DiffusionPrior, PriorConfig
    from dream3d.assets import EMBEDDED_PRIOR

    embedded = DiffusionPrior.load(PriorConfig())
    assert embedded.source == str(EMBEDDED_PRIOR) or os.path.samefile(embedded.source, EMBEDDED_PRIOR)
    why = embedded.outside_vocabulary("a photo of a corgi")
    assert why and "'a <colour> <shape>'" in why and "torus" in why
    for known in ("a red cube", "A purple snowman, back view", "a orange torus."):
        assert embedded.outside_vocabulary(known) is None, known
    assert embedded.outside_vocabulary("a red dragon") and embedded.outside_vocabulary("a pink cube")
    assert DiffusionPrior.load(PriorConfig(model=tiny_prior)).outside_vocabulary("a photo of a corgi") is None


def test_the_embedded_prior_reads_a_prompt_in_the_form_of_its_captions(tiny_prior):
    """Its captions are always "a <colour> <shape>[, <view> view]" (lower case); its tokenizer never saw "an", so
    "an orange torus" must reach the text encoder as "a orange torus". Models without captions in their
    vocabulary.json (every real checkpoint) read every prompt as written."""
    from dream3d.guidance.prior import DiffusionPrior, PriorConfig

    embedded = DiffusionPrior.load(PriorConfig())
    assert embedded.caption("an orange torus") == "a orange torus"
    assert embedded.caption("  An Orange Torus, Back View. ") == "a orange torus, back view"
    assert embedded.caption("a red cube") == "a red cube"
    for other in ("a photo of a corgi", "an orange dragon", ""):
        assert embedded.caption(other) == other
    tok = embedded.tokenizer
    assert tok("an orange torus").input_ids != tok("a orange torus").input_ids  # as written, it would differ
    e = embedded.text_embeddings(["an orange torus", "a orange torus", "An orange torus, front view"])
    assert torch.equal(e[0], e[1]) and not torch.equal(e[0], e[2])
    assert torch.equal(e[2], embedded.text_embeddings("a orange torus, front view")[0])
    plain = DiffusionPrior.load(PriorConfig(model=tiny_prior))
    assert plain.caption("an orange torus") == "an orange torus"


def test_prompts_as_people_write_them_sample_what_the_canonical_prompt_does(tmp_path):
    """dream3d prior sample with the embedded prior: each phrasing gives the canonical prompt's samples, and the
    world classifier names them as it names the canonical ones (an orange torus)."""
    import imageio.v3 as iio

    from dream3d.cli import main
    from dream3d.world.classifier import load_classifier, predict

    def samples(prompt, name):
        main(["prior", "sample", prompt, "--n", "2", "--steps", "20", "--seed", "3", "-o", str(tmp_path / name)])
        files = sorted(f for f in os.listdir(tmp_path / name) if f != "grid.png")
        return torch.stack([torch.from_numpy(iio.imread(tmp_path / name / f)[..., :3] / 255.0) for f in files])

    judge = load_classifier()
    canonical = samples("a orange torus", "canonical")
    a = predict(judge, canonical)
    assert a.color.count("orange") == 2 and a.shape.count("torus") >= 1, (a.color, a.shape)
    for k, phrasing in enumerate(["an orange torus", "An orange torus.", "orange torus", "the orange torus"]):
        said = samples(phrasing, f"phrasing{k}")
        assert torch.equal(said, canonical), phrasing
        b = predict(judge, said)
        assert (a.color, a.shape) == (b.color, b.shape), phrasing


def test_generate_warns_before_training_on_a_prompt_the_prior_does_not_know(tmp_path, monkeypatch):
    import dream3d.pipeline as pipeline

    def no_training(*a, **k):
        raise RuntimeError("stop before training")

    monkeypatch.setattr(pipeline, "Trainer", no_training)
    said = []
    with pytest.raises(RuntimeError, match="stop before training"):
        pipeline.generate(
            load_run_config("dreamgaussian", ["prompt=a photo of a corgi"]), str(tmp_path / "run"), log=said.append
        )
    assert len(said) == 1 and "outside the prompts" in said[0] and "guidance.prior.model" in said[0], said
    said.clear()  # a prompt the prior knows in another form: one line says how it is read
    with pytest.raises(RuntimeError, match="stop before training"):
        pipeline.generate(
            load_run_config("dreamgaussian", ["prompt=an orange torus"]), str(tmp_path / "run2"), log=said.append
        )
    assert said == ["the prior reads 'an orange torus' as 'a orange torus', the form of the captions it was trained on"]


def test_a_prompt_longer_than_the_text_encoder_reads_is_warned_about(tiny_prior):
    from dream3d.guidance.prior import DiffusionPrior, PriorConfig

    prior = DiffusionPrior.load(PriorConfig(model=tiny_prior, device="cpu"))
    with pytest.warns(UserWarning, match=f"reads only the first {prior.max_length}"):
        prior.text_embeddings(["a red cube " * 20])


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    from dream3d.io import atomic_write_text

    atomic_write_text(str(tmp_path / "a.txt"), "x")
    plain = tmp_path / "b.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_recentring_puts_the_object_in_the_middle_at_the_asked_size(tmp_path):
    img = np.zeros((100, 100, 4), np.uint8)
    img[5:25, 60:90] = (0, 0, 255, 255)  # a 20x30 blue box in the top-right corner
    path = _png(tmp_path / "corner.png", img)
    rgb, mask = load_reference_image(path, 50, object_fraction=0.6)
    ys, xs = torch.nonzero(mask[0, ..., 0] > 0.5, as_tuple=True)
    assert abs(int(xs.max() - xs.min() + 1) - 30) <= 1 and abs(int(ys.max() - ys.min() + 1) - 20) <= 1  # 0.6 x 50 wide
    assert abs(float(xs.float().mean()) - 24.5) < 1 and abs(float(ys.float().mean()) - 24.5) < 1
    assert float(rgb[0, 25, 25, 2]) > 0.95 and float(rgb[0, 25, 25, 0]) < 0.05
    _, as_is = load_reference_image(path, 50)  # None: the image as it is
    ys, xs = torch.nonzero(as_is[0, ..., 0] > 0.5, as_tuple=True)
    assert abs(float(xs.float().mean()) - 37) < 1 and abs(float(ys.float().mean()) - 7) < 1


def test_a_tiny_object_is_warned_about_naming_the_crop(tmp_path):
    img = np.zeros((200, 200, 4), np.uint8)
    img[100:110, 50:60] = (0, 200, 0, 255)  # 0.25 % of the frame
    path = _png(tmp_path / "far.png", img)
    with pytest.warns(UserWarning, match=r"covers 0\.25% .*reference\.object_fraction=0\.6"):
        load_reference_image(path, 64)
    img[100:130, 50:80] = (0, 200, 0, 255)  # 2.25 %: no warning, nor with the crop asked for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_reference_image(_png(tmp_path / "near.png", img), 64)
        load_reference_image(path, 64, object_fraction=0.6)


def test_a_large_image_is_box_filtered_first_and_matches_a_full_resolution_resize(tmp_path):
    """A photo-sized image is cropped while it is integers and box-filtered to twice the asked size before the
    antialiased resize (a 6000 x 6000 PNG peaked at 2.9 GB; now 1.0 GB). Reference: the whole image made float,
    put on white and resized in one antialiased step, as before."""
    from torch.nn.functional import interpolate

    from dream3d.pipeline import read_reference

    rng = np.random.default_rng(0)
    img = (rng.random((1500, 1100, 4)) * 255).astype(np.uint8)  # random colours under a transparent background
    img[..., 3] = 0
    img[200:1300, 300:900, 3] = 255
    img[500:700, 400:600, 3] = 128  # a half-transparent patch
    path = _png(tmp_path / "big.png", img)
    rgb, mask = load_reference_image(path, 64)
    assert max(read_reference(path, 64).shape[-2:]) < 4 * 64  # what a run holds until its prior has loaded
    x = torch.from_numpy(img).float() / 255
    a = x[..., 3:]
    chw = torch.cat([x[..., :3] * a + 1 - a, a], -1).permute(2, 0, 1)[None]
    chw = torch.nn.functional.pad(chw, (200, 200, 0, 0))  # to a centred square; padding of rgb is white below
    chw[:, :3, :, :200] = chw[:, :3, :, -200:] = 1
    ref = interpolate(chw, size=(64, 64), mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    assert float((rgb[0] - ref[..., :3]).abs().mean()) < 0.01 and float((mask[0] - ref[..., 3:]).abs().mean()) < 0.01
    assert float((mask[0] - ref[..., 3:]).abs().max()) < 0.25  # at most a fraction of a pixel's shift at the edges


def test_every_named_image_format_reads_and_an_unreadable_file_names_them(tmp_path):
    from PIL import Image

    from dream3d.pipeline import IMAGE_FORMATS, RunError

    img = np.full((32, 32, 3), 255, np.uint8)
    img[8:24, 8:24] = (200, 30, 30)  # a red square on white
    for fmt in IMAGE_FORMATS:
        path = tmp_path / f"square.{fmt.lower()}"
        Image.fromarray(img).save(path, format=fmt)
        with pytest.warns(UserWarning, match="no alpha channel"):
            rgb, mask = load_reference_image(str(path), 32)
        assert float(mask[0, 16, 16]) == 1 and float(mask[0, 1, 1]) == 0 and float(rgb[0, 16, 16, 0]) > 0.7, fmt
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(RunError) as e:
        load_reference_image(str(bad), 32)
    assert all(fmt in str(e.value) for fmt in IMAGE_FORMATS) and "pip install" not in str(e.value), str(e.value)


def test_images_dream3d_cannot_read_are_named_for_what_they_are(tmp_path):
    """A cut-short file, a folder and pixels of an unknown range were all reported as 'not a still image' or 'no
    foreground'. A 32-bit integer image of 16-bit values (as Pillow opens some 16-bit files) reads as 16 bits."""
    import imageio.v3 as iio
    from PIL import Image

    from dream3d.pipeline import RunError

    img = np.full((32, 32, 4), 0, np.uint8)
    img[8:24, 8:24] = (200, 30, 30, 255)
    iio.imwrite(tmp_path / "whole.png", img)
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    wide = np.full((32, 32), 65535, np.int32)
    wide[8:24, 8:24] = 1000
    Image.fromarray(wide, mode="I").save(tmp_path / "wide.tif")
    hdr = np.full((32, 32), 255.0, np.float32)
    hdr[8:24, 8:24] = 76.5
    Image.fromarray(hdr, mode="F").save(tmp_path / "hdr.tif")
    for name, words in (
        ("cut.png", "cut short .*save it again"),
        (".", "is a folder"),
        ("hdr.tif", "float32 pixels from 76.5 to 255.*floating point in 0-1. Save it as an 8-bit PNG"),
    ):
        with pytest.raises(RunError, match=words), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_reference_image(str(tmp_path / name), 32)
    with pytest.warns(UserWarning, match="no alpha channel"):
        rgb, mask = load_reference_image(str(tmp_path / "wide.tif"), 32)
    assert float(mask.mean()) == 0.25 and float(rgb[0, 16, 16, 0]) == pytest.approx(1000 / 65535, abs=1e-6)


def test_an_image_whose_background_is_not_removed_is_refused_naming_the_fix(tmp_path):
    """A photo on a dark background (no alpha) made the whole frame the object, with only the generic warning."""
    from PIL import Image

    from dream3d.pipeline import RunError

    img = np.full((48, 48, 3), 40, np.uint8)  # dark grey background
    img[12:36, 12:36] = (200, 30, 30)
    Image.fromarray(img).save(tmp_path / "photo.jpg", quality=95)
    opaque = np.concatenate([img, np.full((48, 48, 1), 255, np.uint8)], -1)  # an alpha channel that cuts nothing
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    for name, words in (("photo.jpg", "most of its border is not white"), ("opaque.png", "alpha channel is opaque")):
        with pytest.raises(RunError, match=words) as e, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_reference_image(str(tmp_path / name), 32)
        assert "transparent background" in str(e.value) and "white background" in str(e.value)
    # an object cropped tight, touching the frame on two sides, is still read
    tight = np.zeros((48, 48, 4), np.uint8)
    tight[:, 10:38] = (200, 30, 30, 255)
    Image.fromarray(tight).save(tmp_path / "tight.png")
    assert float(load_reference_image(str(tmp_path / "tight.png"), 32)[1].mean()) > 0.4


def test_images_as_phones_and_image_tools_save_them_read_as_they_look(tmp_path):
    """An EXIF-rotated JPEG (phone photos) came out lying on its side; a palette PNG's transparency (pngquant) was
    dropped; a CMYK JPEG's K channel was read as alpha; a 1-bit PNG and a one-frame GIF were refused."""
    from PIL import Image

    from dream3d.pipeline import RunError

    img = np.full((48, 64, 3), 255, np.uint8)
    img[8:30, 12:40] = (200, 30, 30)  # an off-centre box: a rotation would move it
    upright = Image.fromarray(img)
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the pixels are stored turned
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    upright.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    upright.convert("1", dither=Image.Dither.NONE).save(tmp_path / "onebit.png")
    upright.save(tmp_path / "one.gif")
    rgba = np.concatenate([img, np.full((48, 64, 1), 255, np.uint8)], -1)
    rgba[img.min(-1) == 255] = 0  # the white background made transparent, then quantized to a palette
    Image.fromarray(rgba).quantize(8, method=Image.Quantize.FASTOCTREE).save(tmp_path / "palette.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, truth = load_reference_image(str(tmp_path / "upright.png"), 32)
        for name in ("phone.jpg", "cmyk.jpg", "onebit.png", "one.gif"):
            _, mask = load_reference_image(str(tmp_path / name), 32)
            assert float((mask - truth).abs().mean()) < 0.05, name  # (JPEG ringing at the edges: 0.022; sideways: 0.15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the palette's transparency is its alpha: no "no alpha channel" warning
        rgb, mask = load_reference_image(str(tmp_path / "palette.png"), 32)
    assert float((mask - truth).abs().mean()) < 0.02 and float(rgb[0, 8, 12, 0]) > 0.6
    with pytest.raises(RunError, match="cannot read image"):
        (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
        load_reference_image(str(tmp_path / "bad.png"), 32)


def test_an_output_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path):
    from dream3d.pipeline import RunError, check_output_dir, generate

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "mesh.glb").write_bytes(b"my own mesh")  # a name a run writes
    # (without the check, the missing model would be the first error, before anything is written)
    cfg = load_run_config("dreamgaussian", ["prompt=a red cube", f"guidance.prior.model={tmp_path / 'no_model'}"])
    for overwrite in (False, True):  # --overwrite deletes a run, never files that are not one
        with pytest.raises(RunError, match="holds other files but no dream3d run .*mesh.glb, notes.txt"):
            generate(cfg, str(mine), overwrite=overwrite, log=lambda m: None)
    assert (
        sorted(p.name for p in mine.iterdir()) == ["mesh.glb", "notes.txt"]
        and (mine / "mesh.glb").read_bytes() == b"my own mesh"
    )
    # a new, an empty or a run's own folder is fine; so is one holding only hidden files or a wrapper's log
    check_output_dir(str(tmp_path / "new"), resume=False, overwrite=False)
    (tmp_path / "quiet").mkdir()
    (tmp_path / "quiet" / ".DS_Store").write_bytes(b"")
    (tmp_path / "quiet" / "generate.log").write_text("starting\n")
    check_output_dir(str(tmp_path / "quiet"), resume=False, overwrite=False)
    (mine / "config.yaml").write_text("prompt: a red cube\n")  # a run that stopped before its first checkpoint
    check_output_dir(str(mine), resume=False, overwrite=False)


def test_a_saved_input_of_either_format_reads_as_its_run_read_it(tmp_path):
    """RUN/reference.png: today's holds the colour straight (marked so); a run from before 2026-12-06 saved it
    blended on white, unmarked, and must still resume on exactly what it trained on."""
    import imageio.v3 as iio

    from dream3d.pipeline import _file_pixels, _square_from_file, read_saved_reference, save_reference

    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(16, 16, 4, generator=g) * 255).round().to(torch.uint8).numpy()
    pixels[0, 0, 3] = 0  # a transparent background pixel, as every saved input has
    square = _square_from_file(_file_pixels(_square_from_file(pixels)))  # what a run trains on: a fixed point
    save_reference(str(tmp_path / "new.png"), square)
    assert torch.equal(read_saved_reference(str(tmp_path / "new.png")), square)
    old = (square[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # blended on white, no mark
    iio.imwrite(tmp_path / "old.png", old)
    assert torch.equal(
        read_saved_reference(str(tmp_path / "old.png")), torch.from_numpy(old).permute(2, 0, 1)[None] / 255
    )
