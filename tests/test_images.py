"""Exemplar images and masks: every odd file a user may drop in."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lego_studio.core.errors import InputError
from lego_studio.core.images import find_mask_for, list_images, load_image, load_mask


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


# ----------------------------------------------------------------------------- load_image


def test_exif_orientation_is_applied(tmp_path):
    # 20 wide x 10 high, red on the left; orientation 6 = "rotate 90 CW to display".
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(array), tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (10, 20)
    # After a clockwise turn the left (red) half is at the top.
    top = np.asarray(image)[2, 5]
    bottom = np.asarray(image)[17, 5]
    assert top[0] > 200 and top[1] < 60
    assert bottom.max() < 60


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (0, 0, 255, 255)  # opaque blue top half, fully transparent bottom half
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "cutout.png")
    image = load_image(path)
    assert image.mode == "RGB"
    assert tuple(np.asarray(image)[0, 0]) == (0, 0, 255)
    assert tuple(np.asarray(image)[7, 7]) == (255, 255, 255)


def test_palette_with_transparency_and_grey_alpha(tmp_path):
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(0, (0, 0, 3, 6))
    path = _save(palette, tmp_path / "pal.png", transparency=0)
    pixels = np.asarray(load_image(path))
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # transparent index -> white, not black
    assert tuple(pixels[0, 5]) == (10, 200, 30)

    la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    path = _save(la, tmp_path / "la.png")
    assert tuple(np.asarray(load_image(path))[1, 1]) == (255, 255, 255)


def test_cmyk_and_grayscale_become_rgb(tmp_path):
    cmyk = Image.new("CMYK", (5, 5), (0, 255, 255, 0))  # pure red in CMYK
    path = _save(cmyk, tmp_path / "print.jpg", quality=100)
    red = np.asarray(load_image(path))[2, 2]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    grey = Image.new("L", (5, 5), 77)
    path = _save(grey, tmp_path / "grey.png")
    image = load_image(path)
    assert image.mode == "RGB" and tuple(np.asarray(image)[0, 0]) == (77, 77, 77)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    array = np.array([[0, 32896, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(array), tmp_path / "deep.png")
    pixels = np.asarray(load_image(path))[0, :, 0]
    assert list(pixels) == [0, 128, 255]

    path = _save(Image.fromarray(array.astype(np.int32), "I"), tmp_path / "deep.tif")
    assert list(np.asarray(load_image(path))[0, :, 0]) == [0, 128, 255]


def test_huge_images_are_refused_with_a_clear_message(tmp_path):
    path = _save(Image.new("1", (8200, 8200)), tmp_path / "huge.png")
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert "huge.png" in message and "8200x8200" in message and "downscale" in message
    # The limit is a parameter, so callers that can cope may raise or lower it.
    small = _save(Image.new("RGB", (100, 100)), tmp_path / "small.png")
    with pytest.raises(InputError, match="100x100"):
        load_image(small, max_pixels=50 * 50)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.png", b"", "empty file"),
        ("text.jpg", b"this is not a picture at all\n" * 10, "not a readable image"),
        ("vector.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unsupported file format"),
        ("random.webp", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a readable image"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_image(path)
    assert name in str(info.value) and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_image_names_the_file(tmp_path):
    rng = np.random.default_rng(1)
    full = _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.png: not a readable image"):
        load_image(cut)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: no such image file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)


# ----------------------------------------------------------------------------- load_mask


def test_mask_thresholds_any_mode_at_128(tmp_path):
    values = np.array([[0, 127, 128, 255]], np.uint8)
    path = _save(Image.fromarray(values, "L"), tmp_path / "m.png")
    assert load_mask(path, (4, 1)).tolist() == [[0, 0, 255, 255]]

    rgb = np.stack([values] * 3, -1)
    path = _save(Image.fromarray(rgb, "RGB"), tmp_path / "m.jpg", quality=100)
    mask = load_mask(path, (4, 1))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert mask[0, 0] == 0 and mask[0, 3] == 255

    binary = Image.new("1", (4, 2), 0)
    binary.putpixel((1, 1), 1)
    path = _save(binary, tmp_path / "b.png")
    assert load_mask(path, (4, 2)).tolist() == [[0, 0, 0, 0], [0, 255, 0, 0]]


def test_label_map_masks_mark_their_non_zero_pixels(tmp_path):
    # Segmentation tools save 0/1 masks, class-index PNGs (VOC palette: index 1 is dark red) and
    # 16-bit label images: nothing in them reaches 128, and read by brightness the user's subject
    # would silently vanish.
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 2:5] = 1
    expected = (labels * 255).tolist()
    path = _save(Image.fromarray(labels, "L"), tmp_path / "zero_one.png")
    assert load_mask(path, (6, 4)).tolist() == expected

    voc = Image.fromarray(labels * 15).convert("P")  # class 15 ("person")
    palette = [0, 0, 0] + [128, 0, 0] * 255
    voc.putpalette(palette)
    path = _save(voc, tmp_path / "voc.png")
    assert load_mask(path, (6, 4)).tolist() == expected

    path = _save(Image.fromarray(labels.astype(np.uint16) * 3), tmp_path / "labels16.png")
    assert load_mask(path, (6, 4)).tolist() == expected

    # A bright mask still thresholds at 128, and a black mask with a stray speck marks nothing.
    speck = np.zeros((40, 60), np.uint8)
    speck[0, 0] = 3
    path = _save(Image.fromarray(speck, "L"), tmp_path / "speck.png")
    assert load_mask(path, (60, 40)).max() == 0


def test_mask_painted_on_transparency_uses_alpha(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = 0  # black paint: brightness alone would say "no subject"
    rgba[0, 0, 3] = 255
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "painted.png")
    assert load_mask(path, (3, 2)).tolist() == [[255, 0, 0], [0, 0, 0]]


def test_mask_follows_exif_like_its_image(tmp_path):
    array = np.zeros((10, 20), np.uint8)
    array[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(array), tmp_path / "m.jpg", exif=exif, quality=100)
    mask = load_mask(path, (10, 20))
    assert mask.shape == (20, 10)
    assert mask[2, 5] == 255 and mask[17, 5] == 0


def test_mask_size_mismatch_names_both_sizes(tmp_path):
    path = _save(Image.new("L", (30, 20)), tmp_path / "m.png")
    with pytest.raises(InputError) as info:
        load_mask(path, (32, 32))
    assert "m.png" in str(info.value) and "30x20" in str(info.value) and "32x32" in str(info.value)


def test_all_subject_mask_refused_empty_mask_allowed(tmp_path):
    full = _save(Image.new("L", (4, 4), 255), tmp_path / "full.png")
    with pytest.raises(InputError, match=r"full\.png: .*whole image"):
        load_mask(full, (4, 4))
    empty = _save(Image.new("L", (4, 4), 0), tmp_path / "empty.png")
    assert load_mask(empty, (4, 4)).max() == 0


def test_broken_mask_names_the_file(tmp_path):
    path = tmp_path / "m.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match=r"m\.png: not a readable mask"):
        load_mask(path, (4, 4))


# ----------------------------------------------------------------------------- folders


def test_list_images_sorted_naturally_and_filtered(tmp_path):
    for name in ["img10.png", "img2.JPG", "img1.jpeg", "notes.txt", ".hidden.png", "._img3.jpg", "x.webp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["img1.jpeg", "img2.JPG", "img10.png", "x.webp"]


def test_list_images_errors(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        list_images(tmp_path / "missing")
    with pytest.raises(InputError, match="not a folder"):
        list_images(tmp_path / "readme.txt")


def test_find_mask_for_pairs_by_stem(tmp_path):
    images = tmp_path / "images"
    masks = tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]:
        (images / name).write_bytes(b"x")
    for name in ["a.png", "a.jpg", "b_mask.png", "C.png", "notes.txt"]:
        (masks / name).write_bytes(b"x")
    assert find_mask_for(images / "a.jpg", masks) == masks / "a.png"  # png preferred
    assert find_mask_for(images / "b.jpg", masks) == masks / "b_mask.png"
    assert find_mask_for(images / "c.jpg", masks) == masks / "C.png"
    assert find_mask_for(images / "d.jpg", masks) is None
    assert find_mask_for(images / "a.jpg", tmp_path / "no-masks") is None
    # Masks kept beside their images: an image is never its own mask.
    (images / "d_mask.png").write_bytes(b"x")
    assert find_mask_for(images / "d.jpg", images) == images / "d_mask.png"
    assert find_mask_for(images / "a.jpg", images) is None


# ----------------------------------------------------------------------------- image_size_note


def test_image_size_note_names_small_and_far_from_square_images(tmp_path):
    from lego_studio.core.images import image_size_note

    def picture(name, width, height):
        return _save(Image.new("RGB", (width, height), (200, 30, 30)), tmp_path / name)

    fine = [picture("fine.png", 600, 500), picture("fine2.png", 512, 512)]
    assert image_size_note(fine, 512) == ""
    small = picture("thumb.png", 200, 150)  # its 150 px side is enlarged 3.4x to 512
    note = image_size_note(fine + [small], 512)
    assert note.startswith("1 of 3 images is much smaller than the 512 px training size")
    assert "thumb.png, 200x150, enlarged 3.4x" in note and "\n" not in note
    banner = picture("banner.png", 1500, 500)  # the centre square keeps a third of it
    note = image_size_note(fine + [banner], 512)
    assert note.startswith("1 of 3 images is far from square (e.g. banner.png, 1500x500)") and "33%" in note
    both = image_size_note([picture("strip.png", 100, 20)], 512)
    assert both.startswith("the image is much smaller") and "the image is far from square" in both
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")  # reported elsewhere, by the checks that name it
    assert image_size_note(fine + [broken], 512) == ""



# ------------------------------------------------------------------------------ the marked subject's colour


def test_colour_names_name_the_basic_colours():
    from lego_studio.core.images import colour_names
    from lego_studio.shapeworld.world import COLOURS

    for name, rgb in COLOURS.items():  # Shape World's six colours by their own names
        assert colour_names(np.array([[rgb]], np.uint8))[0, 0] == name
    pixels = np.array([[(0, 0, 0), (128, 128, 128), (250, 250, 250), (120, 70, 20), (255, 105, 180)]], np.uint8)
    assert list(colour_names(pixels)[0]) == ["black", "grey", "white", "brown", "pink"]


def _save_renders(folder, renders, grow=1):
    from PIL import ImageFilter

    images, masks = [], []
    for i, (image, mask) in enumerate(renders):
        image.save(folder / f"{i}.png")
        Image.fromarray(np.asarray(mask)).filter(ImageFilter.MaxFilter(grow)).save(folder / f"{i}_mask.png")
        images.append(folder / f"{i}.png")
        masks.append(folder / f"{i}_mask.png")
    return images, masks


@pytest.mark.parametrize("grow", [1, 5, 9])  # exact masks; grown 2 px and 4 px past the subject (rough)
def test_the_marked_subjects_colour_is_read_from_every_shape_world_exemplar_set(tmp_path, grow):
    # Every Shape World concept's exemplars, the concept drawn over or around the subject: the masks'
    # subject colour is the exemplar's own (measured: 8 of 8 with exact masks, and with masks grown
    # 2 or 4 px past the subject of a 64 px render, which take in background around it).
    from lego_studio.core.images import subject_colour
    from lego_studio.shapeworld import benchmark as bm
    from lego_studio.shapeworld.world import CONCEPTS

    for k, concept in enumerate(CONCEPTS):
        folder = tmp_path / f"{grow}-{k}"
        folder.mkdir()
        shape, colour = bm.exemplar_subject(concept)
        images, masks = _save_renders(folder, bm.render_exemplars(concept, (shape, colour), 3), grow)
        assert subject_colour(images, masks) == colour, concept


def test_a_mask_far_rougher_than_the_subject_names_its_colour_or_none_never_another(tmp_path):
    # Masks grown 7 and 10 px past the subject (64 px renders) hold more background than subject:
    # measured, the right colour or none (7 px: 6 of 8 named; 10 px: 1 of 8), never a wrong colour.
    from lego_studio.core.images import subject_colour
    from lego_studio.shapeworld import benchmark as bm
    from lego_studio.shapeworld.world import CONCEPTS

    named = {}
    for grow in (15, 21):
        for k, concept in enumerate(CONCEPTS):
            folder = tmp_path / f"{grow}-{k}"
            folder.mkdir()
            shape, colour = bm.exemplar_subject(concept)
            images, masks = _save_renders(folder, bm.render_exemplars(concept, (shape, colour), 5), grow)
            found = subject_colour(images, masks)
            assert found in (colour, None), (concept, grow, found)
            named[grow] = named.get(grow, 0) + (found is not None)
    assert named == {15: 6, 21: 1}


def test_no_colour_is_named_without_masks_or_for_a_mask_that_takes_in_the_background(tmp_path):
    from lego_studio.core.images import subject_colour

    picture = np.full((40, 40, 3), 255, np.uint8)
    picture[10:20, 10:20] = (36, 84, 220)  # a blue square on white
    Image.fromarray(picture).save(tmp_path / "a.png")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:20] = 255
    Image.fromarray(mask).save(tmp_path / "exact.png")
    assert subject_colour([tmp_path / "a.png"], [tmp_path / "exact.png"]) == "blue"
    assert subject_colour([tmp_path / "a.png"], [None]) is None  # no mask: nothing marked
    mask[0:36, 0:36] = 255  # a loose box, mostly white background: white is not the subject's colour
    Image.fromarray(mask).save(tmp_path / "loose.png")
    assert subject_colour([tmp_path / "a.png"], [tmp_path / "loose.png"]) is None
    quarters = picture.copy()  # a quarter each blue, red, green and yellow: no one colour
    quarters[10:15, 15:20] = (214, 32, 38)
    quarters[15:20, 10:15] = (34, 160, 60)
    quarters[15:20, 15:20] = (242, 206, 22)
    Image.fromarray(quarters).save(tmp_path / "b.png")
    mask[:] = 0
    mask[10:20, 10:20] = 255
    Image.fromarray(mask).save(tmp_path / "exact.png")
    assert subject_colour([tmp_path / "b.png"], [tmp_path / "exact.png"]) is None
