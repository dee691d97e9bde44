"""Image transforms for training and evaluation, driven by the model's input spec.

Both squash the image to a ``resize`` square first (as the reference's 256x256),
then training takes a random ``image_size`` crop (and a mirror where mirroring
keeps the class) and evaluation the centre crop. Random draws come from torch's
global CPU generator; the training loader seeds it per sample
(``ecaml.data.loading``), so augmentation does not depend on worker count.
"""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_resize(image_size: int) -> int:
    """The square to crop ``image_size`` from when none is set: 1/8 larger, so the crop can shift."""
    return image_size + max(1, image_size // 8)


def build_transform(
    image_size: int, channels: int, imagenet_normalise: bool, train: bool, flip: bool, resize: int | None = None
):
    """Resize to ``resize`` x ``resize``, then a random (train) or centre (test) ``image_size`` crop.

    ``flip`` adds a random horizontal mirror when training.
    """
    resize = resize or default_resize(image_size)
    if resize < image_size:
        raise ValueError(f"cannot crop {image_size} px out of an image resized to {resize} px")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet_normalise else ((0.5,) * 3, (0.5,) * 3)
    steps = [T.Grayscale(1) if channels == 1 else T.Lambda(_to_rgb), T.Resize((resize, resize))]
    if train:
        steps.append(T.RandomCrop(image_size))
        if flip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps.append(T.CenterCrop(image_size))
    steps += [T.ToTensor(), T.Normalize(mean[:channels], std[:channels])]
    return T.Compose(steps)


def _to_rgb(image):
    return image.convert("RGB")
