"""Image transforms for training and evaluation, driven by the model's input spec."""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_transform(image_size: int, channels: int, imagenet_normalise: bool, train: bool, flip: bool):
    """Resize to ``image_size``; training adds a small random crop/shift (and a mirror when ``flip``).

    Mirroring is off for characters: a mirrored 'b' is a 'd'.
    """
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet_normalise else ((0.5,) * 3, (0.5,) * 3)
    steps = [T.Grayscale(1) if channels == 1 else T.Lambda(_to_rgb)]
    padded = image_size + max(1, image_size // 8)
    if train:
        steps += [T.Resize((padded, padded)), T.RandomCrop(image_size)]
        if flip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps += [T.Resize((padded, padded)), T.CenterCrop(image_size)]
    steps += [T.ToTensor(), T.Normalize(mean[:channels], std[:channels])]
    return T.Compose(steps)


def _to_rgb(image):
    return image.convert("RGB")
