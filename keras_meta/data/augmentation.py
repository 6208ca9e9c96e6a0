"""`CropFlip`: the random crops and horizontal flips of the 84x84 and 32x32 few-shot papers.

MetaOptNet, TADAM and the MAML follow-ups that augment mini-ImageNet, CIFAR-FS and FC100
pad each training image, crop it back to its size at a random offset, and flip it
horizontally with probability 1/2. Here every random choice is a stateless function of the
episode's seed, so an augmented episode is as reproducible (and resumable) as a plain one.
"""

import dataclasses

import tensorflow as tf

AUGMENTATIONS = ("none", "crop_flip")
# RandomCrop(84, padding=8) and RandomCrop(32, padding=4), as MetaOptNet's loaders have them.
_PAPERS_PADDING = {84: 8, 32: 4}


@dataclasses.dataclass(frozen=True)
class CropFlip:
    """Random crop after zero padding, and a random horizontal flip, per image.

    Args:
        padding: pixels of zero padding on each side before the crop (0: no crop). The
            papers use 8 at 84x84 and 4 at 32x32 (`for_image_size`).
        flip: flip each image left-right with probability 1/2.

    Example:

    >>> augment = CropFlip.for_image_size(84)
    >>> augment(tf.zeros([10, 84, 84, 3], tf.uint8), tf.constant([0, 1], tf.int64)).shape
    TensorShape([10, 84, 84, 3])
    """

    padding: int = 8
    flip: bool = True

    def __post_init__(self):
        if not isinstance(self.padding, int) or isinstance(self.padding, bool) or self.padding < 0:
            raise ValueError(f"padding must be an int >= 0; got {self.padding!r}.")

    @classmethod
    def for_image_size(cls, size):
        """The papers' padding: 8 at 84x84, 4 at 32x32, else a tenth of the side, rounded."""
        return cls(padding=_PAPERS_PADDING.get(size, max(1, round(size / 10))))

    def __call__(self, images, seed):
        """`images` `[n, h, w, c]` (any dtype), `seed` `[2]` int64 -> augmented, same shape."""
        images = tf.convert_to_tensor(images)
        n, h, w = images.shape[0], images.shape[1], images.shape[2]
        if self.padding:
            p = self.padding
            padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
            offsets = tf.random.stateless_uniform(
                [n, 2], tf.random.experimental.stateless_fold_in(seed, 0), minval=0,
                maxval=2 * p + 1, dtype=tf.int32)
            # One gather per axis crops every image at its own offset, without a loop.
            rows = offsets[:, :1] + tf.range(h)[None, :]
            cols = offsets[:, 1:] + tf.range(w)[None, :]
            images = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2,
                               batch_dims=1)
        if self.flip:
            coins = tf.random.stateless_uniform(
                [n], tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
            images = tf.where(coins[:, None, None, None], tf.reverse(images, axis=[2]), images)
        return images

    def get_config(self):
        return dataclasses.asdict(self)


def augmentation(name, image_size):
    """The augmentation called `name` (`AUGMENTATIONS`) for images of side `image_size`, or
    None for "none"."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}; got {name!r}.")
    return None if name == "none" else CropFlip.for_image_size(image_size)
