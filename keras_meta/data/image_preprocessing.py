"""Image preprocessing shared by the episode pipeline and the exported serving graphs.

One definition, used in both places, so that a SavedModel sees images exactly as training did.
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """Turns client images (uint8 or float, any size, 1 or 3 channels) into model inputs.

    Args:
        image_size: (height, width) the model expects.
        channels: channels the model expects (1: greyscale, 3: RGB).
        invert: map x -> 1 - x after scaling (Omniglot: strokes become 1 on a 0 background,
            as in the MAML paper's code).

    Example:

    >>> prep = ImagePreprocessing(image_size=(28, 28), channels=1, invert=True)
    >>> prep(tf.zeros([2, 105, 105, 3], tf.uint8)).shape
    TensorShape([2, 28, 28, 1])
    """

    image_size: tuple = (28, 28)
    channels: int = 1
    invert: bool = False

    def __post_init__(self):
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (height, width) > 0; got {self.image_size!r}.")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {self.channels!r}.")

    def __call__(self, images):
        """`[..., H, W, C]` uint8 (0..255) or float (0..1) -> float32 `[..., h, w, channels]`."""
        images = tf.convert_to_tensor(images)
        if images.shape.rank is not None and images.shape.rank < 3:
            raise ValueError(
                f"Images must have shape [..., height, width, channels]; got {images.shape}.")
        if images.dtype == tf.uint8:
            images = tf.cast(images, tf.float32) / 255.0
        else:
            images = tf.cast(images, tf.float32)
        in_channels = images.shape[-1]
        if in_channels == 3 and self.channels == 1:
            images = tf.image.rgb_to_grayscale(images)
        elif in_channels == 1 and self.channels == 3:
            images = tf.image.grayscale_to_rgb(images)
        elif in_channels not in (1, 3):
            raise ValueError(f"Images must have 1 or 3 channels; got {in_channels}.")
        lead = tf.shape(images)[:-3]
        flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[-3:]], 0))
        if tuple(flat.shape[1:3]) != tuple(self.image_size):
            flat = tf.image.resize(flat, self.image_size, method="area", antialias=True)
        out = tf.reshape(flat, tf.concat([lead, list(self.image_size) + [self.channels]], 0))
        if self.invert:
            out = 1.0 - out
        return out

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["image_size"] = tuple(config["image_size"])
        return cls(**config)
