"""The network's input: pixels to its scale, and on-device batches in which each training image is moved by its own
random affine map, a whole batch at a time."""
import torch
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081  # MNIST training-set pixel mean and std, after scaling to [0, 1]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float [B, 1, 28, 28] in [0, 1]."""
    return images.unsqueeze(1).float() / 255


def standardize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> zero mean, unit variance over MNIST's training set (input scaling, not a norm layer)."""
    return (x - MEAN) / STD


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, 28, 28] -> the network's input [B, 1, 28, 28], standardized."""
    return standardize(to_unit(images))


def affine(images: torch.Tensor, degrees: torch.Tensor, translate: torch.Tensor | None = None,
           scale: torch.Tensor | None = None, shear: torch.Tensor | None = None) -> torch.Tensor:
    """Move each image of [B, C, H, W] by its own affine map about its centre, bilinear, 0 outside the frame,
    for the whole batch at once (a sampling grid, then grid_sample).

    Every number is computed by ATen's own kernels (the shear's tangent as sin / cos, the sampling grid elementwise),
    which run under the instruction-set pin with the rest of a step (machine.pin_isa): torch.tan and F.affine_grid
    would call Intel MKL on a CPU, whose code and last digits follow the CPU's vendor, so a run would not reproduce
    across Intel and AMD (docs/performance.md).

    degrees [B]: rotation, counter-clockwise; translate [B, 2]: shift (x right, y down) in pixels, after the
    rest; scale [B]: zoom factor; shear [B]: shear along x, in degrees. Leaving one out leaves it out. For one
    image this is torchvision.transforms.functional.affine(img, angle=-degrees, translate, scale,
    shear=[shear, 0], bilinear) (its angle turns clockwise), which with translate, scale and shear left out
    is torchvision's rotate(img, degrees, bilinear): exactly so with fill=None, and with fill=0 on
    black-bordered images such as MNIST's.
    """
    theta = affine_theta(degrees, translate, scale, shear, shape=images.shape, dtype=images.dtype)
    return F.grid_sample(images, sampling_grid(theta, images.shape), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def affine_theta(degrees, translate=None, scale=None, shear=None, *, shape, dtype=torch.float32) -> torch.Tensor:
    """The [B, 2, 3] matrices F.affine_grid takes for affine()'s maps of images of `shape` (..., H, W): for each
    output pixel, the input point it samples, in [-1, 1] coordinates."""
    h, w = shape[-2:]
    rad = torch.deg2rad(degrees.to(dtype))
    cos, sin = rad.cos(), rad.sin()
    # affine_grid wants the inverse map: for each output pixel, the input point it samples, in (x right,
    # y down) coordinates scaled to [-1, 1]. The forward map is p -> scale * R * Shear * p + translate;
    # R^-1 = [[cos, -sin], [sin, cos]] turns the image counter-clockwise on screen (y points down).
    a, b, c, d = cos, -sin, sin, cos
    if shear is not None:  # Shear^-1 = [[1, tan], [0, 1]] applied after R^-1
        shear = torch.deg2rad(shear.to(dtype))
        tan = shear.sin() / shear.cos()  # torch.tan is MKL's vector math on a CPU; sin and cos are ATen's
        a, b = a + tan * c, b + tan * d
    if scale is not None:
        s = scale.to(dtype)
        a, b, c, d = a / s, b / s, c / s, d / s
    # From pixels to the [-1, 1] coordinates of each axis (the identity for square images).
    b, c = b * (h / w), c * (w / h)
    if translate is None:
        tx = ty = torch.zeros_like(rad)
    else:  # the input point of output pixel p is M^-1 (p - translate)
        t = translate.to(dtype)
        tx = -(a * t[:, 0] * (2 / w) + b * t[:, 1] * (2 / h))
        ty = -(c * t[:, 0] * (2 / w) + d * t[:, 1] * (2 / h))
    return torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1)  # [B, 2, 3]


def sampling_grid(theta: torch.Tensor, shape) -> torch.Tensor:
    """F.affine_grid(theta, shape, align_corners=False), computed elementwise (affine_grid's batched matrix product is
    MKL's on a CPU): for each output pixel (x, y) of each image, the input point it samples, a x + b y + t for each of
    its two rows (a, b, t) of theta [B, 2, 3], in [-1, 1] coordinates. Returns [B, H, W, 2]."""
    h, w = shape[-2:]
    # The pixel centres in [-1, 1], as affine_grid builds them (ATen's linspace_from_neg_one, align_corners=False).
    x = (torch.linspace(-1, 1, w, dtype=theta.dtype, device=theta.device) * (w - 1) / w).view(1, 1, 1, w)
    y = (torch.linspace(-1, 1, h, dtype=theta.dtype, device=theta.device) * (h - 1) / h).view(1, 1, h, 1)
    a, b, t = (theta[:, :, k, None, None] for k in range(3))  # each [B, 2, 1, 1]: per image, per output coordinate
    return ((a * x + b * y) + t).permute(0, 2, 3, 1)  # [B, 2, H, W] -> [B, H, W, 2]: (x, y) last, as grid_sample wants


def draw(images, generator=None, *, degrees=0.0, translate=0.0, scale=0.0, shear=0.0):
    """An epoch's random draws for uint8 images [N, 28, 28]: (order [N] or None, {name: [N] or [N, 2]} the parameters
    of each image's affine map, on the images' device). With a generator: shuffled, and each image moved by its own
    random affine map (see affine): a rotation uniform in ±degrees, a shift uniform in ±translate of the width and of
    the height, a zoom uniform in [1 - scale, 1 + scale] and a shear along x uniform in ±shear degrees; a setting of 0
    draws nothing. They are drawn at once on the CPU (so a seed gives the same epoch on every device), in that order,
    and moved in one copy."""
    n = len(images)
    order, params = None, {}
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(images.device, non_blocking=True)
        uniform = lambda *shape: torch.rand(*shape, generator=generator) * 2 - 1  # in [-1, 1)
        if degrees:
            params["degrees"] = uniform(n) * degrees
        if translate:
            h, w = images.shape[-2:]
            params["translate"] = uniform(n, 2) * translate * torch.tensor([w, h])  # pixels, (x, y)
        if scale:
            params["scale"] = 1 + uniform(n) * scale
        if shear:
            params["shear"] = uniform(n) * shear
        if params:
            params.setdefault("degrees", torch.zeros(n))
        params = {k: v.to(images.device, non_blocking=True) for k, v in params.items()}
    return order, params


def batches(data, batch_size, *, generator=None, **augmentation):
    """Yield (x [B, 1, 28, 28] standardized, y [B]) from (uint8 images [N, 28, 28], labels [N]) on the device:
    in order, or with a generator shuffled and augmented as `augmentation` (draw's keywords) says, each batch's
    maps built and sampled elementwise on the device (affine)."""
    images, labels = data
    order, params = draw(images, generator, **augmentation)
    for start in range(0, len(labels), batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        x = to_unit(images[idx])  # [B, 1, 28, 28]
        if params:  # fill 0 is black: transform before standardizing
            x = affine(x, **{k: v[start:start + batch_size] for k, v in params.items()})
        yield standardize(x), labels[idx]
