"""Domain randomisation of the sets rendered from user meshes (synthetic.generate_from_meshes).

Every choice is a named field of RenderOptions with its default here, recorded in the set's
synthetic_info.json (docs/data.md §2c documents each). A Randomiser holds the options with what
they need at render time (the checked background photos, the distractor meshes); its methods
take the image's numpy Generator, so a seed fixes every pixel.

Order of one image (synthetic.render_mesh_single): pose, object colour (meshes without colours),
lights, distractors behind and occluders in front, rendering, background, object cavity shading,
object colour jitter, object surface detail, composite, blur, sensor noise; the JPEG quality
comes from a stream of its own.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

import cli
from backgrounds import list_photos, photo_background, procedural_photo
from errors import InputError
from image import gaussian_blur
from render import (
    AMBIENT_RANGE, ELEVATION_RANGE_DEG, LIGHT_COUNT_RANGE, LIGHT_INTENSITY_RANGE, LIGHT_SATURATION_MAX,
    SHININESS_RANGE, SPECULAR_RANGE, Lighting, Mesh, make_mesh,
)

# defaults (docs/data.md §2c)
INPLANE_RANGE_DEG = (-45.0, 45.0)  # roll: a photo of an object on a table is near upright (LM-O: -42 to +42)
DISTRACTOR_RANGE = (0, 4)  # procedural objects behind the object
OCCLUDER_RANGE = (0, 1)  # procedural objects in front of it, overlapping its silhouette
NEIGHBOUR_RANGE = (3, 8)  # procedural objects just behind it, around its outline (real clutter touches the object)
MIN_VISIBLE = 0.6  # occluders are dropped when less of the object than this stays visible
LOOKALIKE_FRACTION = 0.0  # procedural objects coloured in the object's own colours (colour alone cannot tell)
SHARP_SHAPE_RANGE = (20, 60)  # sharp-edged, full-contrast shapes over a procedural background (print, tiles)
GROUND_FRACTION = 0.0  # images where the object stands on a textured plane drawn in perspective (a table)
HUE_SHIFT = 0.03  # the object's hue moves by up to this fraction of the colour circle
SATURATION_RANGE = (0.7, 1.3)  # multipliers of the object's saturation, brightness, contrast
BRIGHTNESS_RANGE = (0.7, 1.4)
CONTRAST_RANGE = (0.7, 1.3)
CAVITY_RANGE = (0.0, 0.0)  # grooves darkened, ridges lit, from the depth map (ambient occlusion, roughly)
DETAIL_RANGE = (0.0, 0.0)  # fine surface detail over the object, grey levels (real ones: ridges, print, dents)
BLUR_SIGMA_RANGE_PX = (0.0, 1.2)  # Gaussian blur of the whole image
NOISE_SIGMA_RANGE = (0.0, 6.0)  # Gaussian sensor noise, grey levels (0-255)
JPEG_QUALITY_RANGE = (70, 95)

DISTRACTOR_POOL = 12  # procedural meshes made once per set, scaled and turned per use
DISTRACTOR_SIZE = (0.6, 2.0)  # behind: radius relative to the object's
DISTRACTOR_DEPTH = (0.0, 0.6)  # behind: extra distance beyond touching, relative to the object's distance
OCCLUDER_SIZE = (0.3, 0.7)  # in front: apparent radius relative to the object's
OCCLUDER_DEPTH = (0.4, 0.85)  # in front: distance relative to the object's near side
OCCLUDER_OFFSET = (0.6, 1.3)  # in front: centre offset from the object's, in apparent object radii
NEIGHBOUR_SIZE = (0.7, 1.6)  # beside: radius relative to the object's (procedural meshes look smaller than that)
NEIGHBOUR_DEPTH = (0.0, 0.1)  # beside: extra distance beyond touching, relative to the object's distance
NEIGHBOUR_OFFSET = (0.6, 1.1)  # beside: centre offset, in apparent radii of the object and the neighbour together
NEAR_PLANE_M = 0.05
CAVITY_SIGMA_PX = (1.5, 3.5)  # the neighbourhood a pixel's depth is compared with (Gaussian sigma, pixels)
CAVITY_DEPTH = 0.03  # in object radii: a pixel this much behind its neighbourhood gets the full darkening
DETAIL_NOISE_SIGMA_PX = (0.7, 2.0)  # the detail's noise: white noise blurred by this sigma (pixels)
DETAIL_STRIPE_PERIOD_PX = (3.0, 12.0)  # the detail's stripes: this period (pixels), any direction
GROUND_HALF_SIZE = (2.5, 8.0)  # the plane's half side, in the object's radii
GROUND_OFFSET = 0.6  # the object stands anywhere within this fraction of the half side from the plane's centre
GROUND_TEXTURE_PX = 512  # side of the plane's procedural texture
GROUND_SHRINK = 0.7  # a plane reaching behind the camera is shrunk by this factor, up to GROUND_TRIES times
GROUND_TRIES = 8


def _pair(name: str, value, low=-math.inf, high=math.inf, integer: bool = False) -> tuple:
    """value as a checked (lo, hi) tuple; InputError naming the option."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected two numbers (low, high); got {value!r}") from None
    if not (low <= lo <= hi <= high) or (integer and (lo != int(lo) or hi != int(hi))):
        kind = "whole numbers " if integer else ""
        raise InputError(f"{name} {lo:g},{hi:g}: expected {kind}{low:g} <= low <= high <= {high:g}")
    return (int(lo), int(hi)) if integer else (lo, hi)


@dataclass(frozen=True)
class RenderOptions:
    """How a set of user meshes is rendered; ranges are (low, high), drawn uniformly per image.

    Camera: distance_m (metres from the camera to the model origin; None: from each mesh's size
    and the camera, synthetic.camera_distances), elevation_deg (the view above the model's xy
    plane), inplane_deg (roll about the optical axis).
    Lights (render.Lighting.random): lights (how many), light_intensity (their summed diffuse
    intensity), light_saturation (0 white), ambient, specular, shininess.
    Scene: backgrounds (a folder of photos; None: procedural photo-like backgrounds), distractors
    (procedural objects behind, how many), occluders (in front, overlapping the object, how
    many), min_visible (occluders that hide more are dropped), neighbours (just behind the object,
    around its outline, how many: the clutter that touches an object in a real scene),
    lookalikes (the fraction of those procedural objects drawn in the object's own colours),
    sharp_shapes (how many sharp-edged, full-contrast shapes over a procedural background), ground
    (the fraction of images where the object stands on a textured plane, a table, drawn in
    perspective under it: the plane of the mesh's lowest point, z up as --elevation assumes).
    Camera effects: hue (largest shift of the object's hue, fraction of the circle), saturation,
    brightness, contrast (multipliers of the object's pixels), cavity (the strength of the shading
    from the depth map: grooves darker, ridges lighter), detail (the amplitude, grey levels,
    of fine surface detail over the object's pixels: band-limited noise plus stripes), blur_px
    (Gaussian sigma of the whole image), noise (sensor noise sigma, grey levels), jpeg_quality.
    """
    distance_m: tuple | None = None
    elevation_deg: tuple = ELEVATION_RANGE_DEG
    inplane_deg: tuple = INPLANE_RANGE_DEG
    lights: tuple = LIGHT_COUNT_RANGE
    light_intensity: tuple = LIGHT_INTENSITY_RANGE
    light_saturation: float = LIGHT_SATURATION_MAX
    ambient: tuple = AMBIENT_RANGE
    specular: tuple = SPECULAR_RANGE
    shininess: tuple = SHININESS_RANGE
    backgrounds: str | None = None
    distractors: tuple = DISTRACTOR_RANGE
    occluders: tuple = OCCLUDER_RANGE
    min_visible: float = MIN_VISIBLE
    neighbours: tuple = NEIGHBOUR_RANGE
    lookalikes: float = LOOKALIKE_FRACTION
    sharp_shapes: tuple = SHARP_SHAPE_RANGE
    ground: float = GROUND_FRACTION
    hue: float = HUE_SHIFT
    saturation: tuple = SATURATION_RANGE
    brightness: tuple = BRIGHTNESS_RANGE
    contrast: tuple = CONTRAST_RANGE
    cavity: tuple = CAVITY_RANGE
    detail: tuple = DETAIL_RANGE
    blur_px: tuple = BLUR_SIGMA_RANGE_PX
    noise: tuple = NOISE_SIGMA_RANGE
    jpeg_quality: tuple = JPEG_QUALITY_RANGE

    def checked(self) -> RenderOptions:
        """The options with every range as a checked tuple; InputError naming the first bad one."""
        values = {
            "distance_m": None if self.distance_m is None else _pair("distance_m", self.distance_m, 0.0),
            "elevation_deg": _pair("elevation_deg", self.elevation_deg, -89.0, 89.0),
            "inplane_deg": _pair("inplane_deg", self.inplane_deg, -360.0, 360.0),
            "lights": _pair("lights", self.lights, 1, 16, integer=True),
            "light_intensity": _pair("light_intensity", self.light_intensity, 0.0),
            "ambient": _pair("ambient", self.ambient, 0.0),
            "specular": _pair("specular", self.specular, 0.0),
            "shininess": _pair("shininess", self.shininess, 1.0),
            "distractors": _pair("distractors", self.distractors, 0, 50, integer=True),
            "occluders": _pair("occluders", self.occluders, 0, 10, integer=True),
            "neighbours": _pair("neighbours", self.neighbours, 0, 50, integer=True),
            "sharp_shapes": _pair("sharp_shapes", self.sharp_shapes, 0, 200, integer=True),
            "saturation": _pair("saturation", self.saturation, 0.0),
            "brightness": _pair("brightness", self.brightness, 0.0),
            "contrast": _pair("contrast", self.contrast, 0.0),
            "cavity": _pair("cavity", self.cavity, 0.0, 1.0),
            "detail": _pair("detail", self.detail, 0.0, 255.0),
            "blur_px": _pair("blur_px", self.blur_px, 0.0, 20.0),
            "noise": _pair("noise", self.noise, 0.0, 128.0),
            "jpeg_quality": _pair("jpeg_quality", self.jpeg_quality, 1, 100, integer=True),
        }
        for name, low, high in (("light_saturation", 0.0, 1.0), ("min_visible", 0.0, 1.0), ("lookalikes", 0.0, 1.0),
                                 ("ground", 0.0, 1.0), ("hue", 0.0, 0.5)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and low <= v <= high):
                shown = f"{v:g}" if isinstance(v, (int, float)) else repr(v)
                raise InputError(f"{name} {shown}: expected a number from {low:g} to {high:g}")
        if self.backgrounds is not None and not isinstance(self.backgrounds, str):
            values["backgrounds"] = str(self.backgrounds)
        return RenderOptions(**{**asdict(self), **values})

    def record(self) -> dict:
        """The options as JSON values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def lighting(self, rng: np.random.Generator) -> Lighting:
        return Lighting.random(rng, count=self.lights, intensity=self.light_intensity,
                               saturation=self.light_saturation, ambient=self.ambient, specular=self.specular,
                               shininess=self.shininess)


def distractor_pool(rng_for, n: int = DISTRACTOR_POOL) -> list[Mesh]:
    """n procedural meshes of 1 m diameter, mesh k from rng_for(k) (a numpy Generator)."""
    return [make_mesh(rng_for(k), diameter=1.0) for k in range(n)]


def lookalike(mesh: Mesh, colours: np.ndarray) -> Mesh:
    """mesh in the colours of another object: each of its colours moved to the colour of `colours`
    (K, 3) uint8 at the same brightness rank, so its patterns stay and its palette is the object's."""
    def luma(c):
        return np.asarray(c, np.float64) @ np.array([0.299, 0.587, 0.114])

    own = np.sort(luma(mesh.face_colors))
    target = colours[np.argsort(luma(colours), kind="stable")]

    def moved(c):
        q = np.searchsorted(own, luma(c), side="left") / max(len(own) - 1, 1)
        return target[np.round(np.clip(q, 0.0, 1.0) * (len(target) - 1)).astype(np.int64)]

    return Mesh(mesh.vertices, mesh.faces, mesh.normals, moved(mesh.vertex_colors), moved(mesh.face_colors),
                None, None, True, mesh.two_sided)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation (3, 3) (a normalised Gaussian quaternion)."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _scaled(mesh: Mesh, radius: float) -> Mesh:
    """The mesh scaled so that its vertices reach `radius` metres from its origin."""
    s = radius / float(np.linalg.norm(mesh.vertices, axis=1).max())
    return Mesh(mesh.vertices * s, mesh.faces, mesh.normals, mesh.vertex_colors, mesh.face_colors)


@dataclass
class Randomiser:
    """RenderOptions with what they need at render time: photos (the checked --bg-dir files)
    and pool (the distractor meshes); picklable for the worker processes."""
    options: RenderOptions
    photos: list = field(default_factory=list)
    pool: list = field(default_factory=list)

    @classmethod
    def prepare(cls, options: RenderOptions, rng_for) -> Randomiser:
        """Check the options and the backgrounds folder (InputError before any rendering) and make
        the distractor meshes (mesh k from rng_for(k)) when the options ask for any."""
        options = options.checked()
        photos = list_photos(options.backgrounds) if options.backgrounds is not None else []
        need_pool = options.distractors[1] > 0 or options.occluders[1] > 0 or options.neighbours[1] > 0
        return cls(options, photos, distractor_pool(rng_for) if need_pool else [])

    def clutter(self, rng: np.random.Generator, radius: float, t: np.ndarray, K: np.ndarray, width: int,
                height: int, colours: np.ndarray | None = None) -> tuple[list, list]:
        """(behind, in_front): lists of (Mesh, (R, t)) around an object reaching `radius` metres from
        its origin at t (3,) m. Behind: anywhere in the image, beyond the object's far side, and
        the neighbours, just beyond it around its outline. In front: between the camera and the
        object's near side, overlapping its silhouette. The neighbours are drawn last, and only
        when the options ask for some, so that a set without them keeps its pixels. With lookalikes,
        each object is in the colours `colours` (K, 3) uint8 (the object's) with that probability,
        drawn after all the placements (a set without lookalikes keeps its pixels)."""
        o = self.options
        d_obj = float(np.linalg.norm(t))
        Kinv = np.linalg.inv(K)

        def at_pixel(u, v, depth):
            ray = Kinv @ np.array([u, v, 1.0])
            return depth * ray / np.linalg.norm(ray)

        behind, front = [], []
        for _ in range(int(rng.integers(o.distractors[0], o.distractors[1] + 1))):
            mesh = self.pool[int(rng.integers(len(self.pool)))]
            r = radius * rng.uniform(*DISTRACTOR_SIZE)
            depth = d_obj + radius + r + d_obj * rng.uniform(*DISTRACTOR_DEPTH)
            pose = (_random_rotation(rng), at_pixel(rng.uniform(0, width), rng.uniform(0, height), depth))
            behind.append((_scaled(mesh, r), pose))
        centre = K @ t
        centre = centre[:2] / centre[2]
        r_px = K[0, 0] * radius / d_obj
        for _ in range(int(rng.integers(o.occluders[0], o.occluders[1] + 1))):
            mesh = self.pool[int(rng.integers(len(self.pool)))]
            depth = (d_obj - radius) * rng.uniform(*OCCLUDER_DEPTH)
            r = radius * depth / d_obj * rng.uniform(*OCCLUDER_SIZE)
            ang, off = rng.uniform(0, 2 * np.pi), rng.uniform(*OCCLUDER_OFFSET) * r_px
            rot = _random_rotation(rng)
            if depth - r < NEAR_PLANE_M or depth + r > d_obj - radius:
                continue  # the object is too near the camera for an occluder between them
            pixel = centre + off * np.array([math.cos(ang), math.sin(ang)])
            front.append((_scaled(mesh, r), (rot, at_pixel(pixel[0], pixel[1], depth))))
        if o.neighbours[1] > 0:
            for _ in range(int(rng.integers(o.neighbours[0], o.neighbours[1] + 1))):
                mesh = self.pool[int(rng.integers(len(self.pool)))]
                r = radius * rng.uniform(*NEIGHBOUR_SIZE)
                depth = d_obj + radius + r + d_obj * rng.uniform(*NEIGHBOUR_DEPTH)
                ang = rng.uniform(0, 2 * np.pi)
                off = (r_px + K[0, 0] * r / depth) * rng.uniform(*NEIGHBOUR_OFFSET)
                pixel = centre + off * np.array([math.cos(ang), math.sin(ang)])
                behind.append((_scaled(mesh, r), (_random_rotation(rng), at_pixel(pixel[0], pixel[1], depth))))
        if o.lookalikes > 0 and colours is not None and len(colours):
            behind = [(lookalike(m, colours) if rng.random() < o.lookalikes else m, pose) for m, pose in behind]
            front = [(lookalike(m, colours) if rng.random() < o.lookalikes else m, pose) for m, pose in front]
        return behind, front

    def background(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB: a random photo crop with --bg-dir, else a procedural photo."""
        if self.photos:
            return photo_background(rng, self.photos, width, height)
        return procedural_photo(rng, width, height, sharp_shapes=self.options.sharp_shapes)

    def ground(self, rng: np.random.Generator, background: np.ndarray, R: np.ndarray, t: np.ndarray,
               vertices: np.ndarray, K: np.ndarray) -> np.ndarray:
        """The background (H, W, 3) uint8 with, in a `ground` fraction of images, a table under the
        object: a square of procedural texture (with the sharp shapes) on the plane z = the lowest
        vertex's z of the model frame, seen through the object's pose (R (3, 3), t (3,) m) and K,
        the object anywhere near its middle. The object stands above that plane, so the plane never
        hides it, and its bottom corners touch it as on a real table. A square reaching behind the
        camera is shrunk until it is in front (none after GROUND_TRIES); a camera below the plane
        (a negative --elevation) gets none. No draw when ground is 0, so that a set without it
        keeps its pixels."""
        if self.options.ground <= 0 or rng.random() >= self.options.ground:
            return background
        base = float(vertices[:, 2].min())
        if (-R.T @ t)[2] <= base:  # the camera centre in the model frame: under the table
            return background
        radius = float(np.linalg.norm(vertices, axis=1).max())
        half = radius * rng.uniform(*GROUND_HALF_SIZE)
        shift = rng.uniform(-GROUND_OFFSET, GROUND_OFFSET, size=2)
        side = GROUND_TEXTURE_PX
        texture = procedural_photo(rng, side, side, sharp_shapes=self.options.sharp_shapes)
        unit = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
        for _ in range(GROUND_TRIES):
            corners = np.column_stack([(unit + shift) * half, np.full(4, base)])  # model frame, metres
            cam = corners @ R.T + t
            if cam[:, 2].min() > NEAR_PLANE_M:
                break
            half *= GROUND_SHRINK
        else:
            return background
        px = cam @ K.T
        px = (px[:, :2] / px[:, 2:]).astype(np.float32)
        src = np.array([[0, 0], [side, 0], [side, side], [0, side]], np.float32)
        H = cv2.getPerspectiveTransform(src, px)
        h, w = background.shape[:2]
        plane = cv2.warpPerspective(texture, H, (w, h), flags=cv2.INTER_LINEAR)
        inside = cv2.warpPerspective(np.full((side, side), 255, np.uint8), H, (w, h), flags=cv2.INTER_NEAREST)
        out = background.copy()
        out[inside > 0] = plane[inside > 0]
        return out

    def jitter(self, rng: np.random.Generator, rgb: np.ndarray, selected: np.ndarray) -> None:
        """Shift hue and scale saturation, brightness and contrast of rgb (H, W, 3) uint8 where
        selected (H, W) bool, in place (one draw of each, even when nothing is selected)."""
        o = self.options
        dh, s, b, c = (rng.uniform(-o.hue, o.hue), rng.uniform(*o.saturation), rng.uniform(*o.brightness),
                       rng.uniform(*o.contrast))
        if not selected.any():
            return
        px = rgb[selected].reshape(-1, 1, 3).astype(np.float32) / 255.0
        hsv = cv2.cvtColor(px, cv2.COLOR_RGB2HSV)  # float: H in degrees, S and V in 0-1
        hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * dh, 360.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * s, 0.0, 1.0)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(-1, 3)
        mean = out.mean()
        out = ((out - mean) * c + mean) * b
        rgb[selected] = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)

    def cavity(self, rng: np.random.Generator, rgb: np.ndarray, depth: np.ndarray, selected: np.ndarray,
               radius: float) -> None:
        """Shade rgb (H, W, 3) uint8 where selected (H, W) bool, in place, by its depth (H, W) metres:
        each pixel is compared with the mean depth of the selected pixels around it (a Gaussian of
        sigma from CAVITY_SIGMA_PX); one CAVITY_DEPTH x radius (m) behind it multiplies the pixel by
        1 - s, as far in front by 1 + s, with s uniform in `cavity` (linear between, clipped beyond).

        Smooth shading from interpolated normals has no shadow in a groove, where a photo of the
        object shows a dark line (ambient occlusion) and a lit ridge; the grooves and rims of a
        mesh then look as in a photo (docs/data.md). No draw when the range is 0,0."""
        lo, hi = self.options.cavity
        if hi <= 0 or not selected.any():
            return
        strength, sigma = rng.uniform(lo, hi), rng.uniform(*CAVITY_SIGMA_PX)
        ys, xs = np.nonzero(selected)
        pad = int(math.ceil(3 * sigma))
        y0, x0 = max(int(ys.min()) - pad, 0), max(int(xs.min()) - pad, 0)
        y1, x1 = int(ys.max()) + 1 + pad, int(xs.max()) + 1 + pad
        box = selected[y0:y1, x0:x1]
        weight = box.astype(np.float64)
        z = np.where(box, depth[y0:y1, x0:x1], 0.0)
        around = cv2.GaussianBlur(z, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), 1e-12)
        shade = 1.0 + strength * np.clip((around - z) / (CAVITY_DEPTH * radius), -1.0, 1.0)
        patch = rgb[y0:y1, x0:x1]
        patch[box] = np.clip(np.round(patch[box] * shade[box][:, None]), 0, 255).astype(np.uint8)

    def detail(self, rng: np.random.Generator, rgb: np.ndarray, selected: np.ndarray) -> None:
        """Add fine surface detail to rgb (H, W, 3) uint8 where selected (H, W) bool, in place: a grey
        pattern of unit spread times an amplitude uniform in `detail`, the sum of band-limited noise
        (DETAIL_NOISE_SIGMA_PX) and soft stripes (DETAIL_STRIPE_PERIOD_PX) in random shares.

        A real object's surface has detail at a few pixels (ridges, holes, print, reflections) that
        a smooth render lacks; a model trained without it shrinks its boxes on real photos (design
        §7.7). No draw when the range is 0,0 (a set without it keeps its pixels) or nothing is
        selected."""
        lo, hi = self.options.detail
        if hi <= 0 or not selected.any():
            return
        ys, xs = np.nonzero(selected)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        h, w = int(y1 - y0), int(x1 - x0)
        amplitude, share = rng.uniform(lo, hi), rng.random()
        noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0),
                                 rng.uniform(*DETAIL_NOISE_SIGMA_PX))
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(*DETAIL_STRIPE_PERIOD_PX), rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        along = xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))
        stripes = np.sin(np.float32(2 * np.pi / period) * along + np.float32(phase))
        pattern = share * noise / max(float(noise.std()), 1e-6) + (1 - share) * stripes / np.float32(np.sqrt(0.5))
        pattern /= max(float(pattern.std()), 1e-6)
        box = selected[y0:y1, x0:x1]
        patch = rgb[y0:y1, x0:x1]
        patch[box] = np.clip(np.round(patch[box].astype(np.float32) + np.float32(amplitude) * pattern[box][:, None]),
                             0, 255).astype(np.uint8)

    def finish(self, rng: np.random.Generator, background: np.ndarray, rendering) -> np.ndarray:
        """The rendered pixels over the background, then blur and sensor noise: (H, W, 3) uint8."""
        o = self.options
        img = background.copy()
        cv2.copyTo(rendering.rgb, (rendering.ids >= 0).view(np.uint8), img)
        sigma, noise = rng.uniform(*o.blur_px), rng.uniform(*o.noise)
        img = gaussian_blur(img, sigma)
        if noise > 0:
            grain = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
            img = np.clip(np.round(img.astype(np.float32) + grain), 0, 255).astype(np.uint8)
        return img

    def jpeg_quality(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.options.jpeg_quality[0], self.options.jpeg_quality[1] + 1))


# --------------------------------------------------------------------------------------------
# Command-line flags (tools/make_synthetic_linemod.py --mesh; one spelling wherever they appear)
# --------------------------------------------------------------------------------------------

# RenderOptions field -> (flag, what one value is); a range is given as LOW,HIGH
OPTION_FLAGS = {
    "distance_m": ("--distance", "metres from the camera to the model origin (default: from the mesh size and "
                                 "the camera, LINEMOD's 0.6-1.2 m for a LINEMOD-sized object)"),
    "elevation_deg": ("--elevation", "degrees of the view above the model's xy plane"),
    "inplane_deg": ("--inplane", "degrees of roll about the optical axis"),
    "lights": ("--lights", "number of directional lights"),
    "light_intensity": ("--light-intensity", "summed diffuse intensity of the lights"),
    "light_saturation": ("--light-saturation", "largest saturation of a light's colour (0 white)"),
    "ambient": ("--ambient", "ambient light"),
    "specular": ("--specular", "strength of the specular highlight"),
    "shininess": ("--shininess", "Blinn-Phong exponent of the highlight"),
    "backgrounds": ("--bg-dir", "folder of background photos: e.g. VOC2012 JPEGImages (default: procedural "
                                "photo-like backgrounds)"),
    "distractors": ("--distractors", "procedural objects behind the object"),
    "occluders": ("--occluders", "procedural objects in front of the object, overlapping it"),
    "min_visible": ("--min-visible", "occluders are dropped when less of the object stays visible"),
    "neighbours": ("--neighbours", "procedural objects just behind the object, around its outline"),
    "lookalikes": ("--lookalikes", "fraction of the procedural objects drawn in the object's own colours"),
    "sharp_shapes": ("--sharp-shapes", "sharp-edged, full-contrast shapes over a procedural background"),
    "ground": ("--ground", "fraction of images where the object stands on a textured plane (a table) drawn "
                           "in perspective under it"),
    "hue": ("--hue", "largest shift of the object's hue, fraction of the colour circle"),
    "saturation": ("--saturation", "multiplier of the object's saturation"),
    "brightness": ("--brightness", "multiplier of the object's brightness"),
    "contrast": ("--contrast", "multiplier of the object's contrast"),
    "cavity": ("--cavity", "strength of the shading from the depth map over the object: grooves darker, "
                           "ridges lighter (0-1)"),
    "detail": ("--detail", "amplitude of fine surface detail (noise and stripes of a few pixels) over the "
                           "object, grey levels"),
    "blur_px": ("--blur", "Gaussian blur sigma of the image, pixels"),
    "noise": ("--noise", "sensor noise sigma, grey levels"),
    "jpeg_quality": ("--jpeg-quality", "JPEG quality"),
}


def _default_text(value) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


def add_render_flags(p, group_title: str, skip=()) -> None:
    """One flag per RenderOptions field (OPTION_FLAGS) except `skip`, default None (the option's
    default); ranges as LOW,HIGH (one number N means N,N)."""
    group = p.add_argument_group(group_title)
    defaults = RenderOptions()
    for name, (flag, what) in OPTION_FLAGS.items():
        if name in skip:
            continue
        default = getattr(defaults, name)
        if name == "backgrounds":
            group.add_argument(flag, default=None, metavar="DIR", help=what)
            cli.add_alias(p, "--backgrounds", flag)  # the name train.py gives the same folder: --bg-dir
        elif default is None:
            group.add_argument(flag, default=None, metavar="LOW,HIGH", help=f"{what}; a range drawn per image")
        elif isinstance(default, tuple):
            group.add_argument(flag, default=None, metavar="LOW,HIGH",
                               help=f"{what}; a range drawn per image (default {_default_text(default)})")
        else:
            group.add_argument(flag, type=float, default=None, help=f"{what} (default {_default_text(default)})")


def parse_range(flag: str, text) -> tuple[float, float]:
    """'LOW,HIGH' or 'N' -> (low, high); InputError naming the flag."""
    parts = str(text).split(",")
    try:
        values = [float(x) for x in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise InputError(f"{flag} {text}: expected LOW,HIGH or one number")
    return (values[0], values[-1])


def options_from_args(args, skip=()) -> RenderOptions:
    """RenderOptions from the flags of add_render_flags: each flag given replaces its default; checked."""
    values = {}
    for name, (flag, _) in OPTION_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None) if name not in skip else None
        if value is None:
            continue
        default = getattr(RenderOptions(), name)
        ranged = name != "backgrounds" and (isinstance(default, tuple) or default is None)
        values[name] = parse_range(flag, value) if ranged else value
    try:
        return RenderOptions(**values).checked()
    except InputError as exc:  # name the flag, not the field
        text = str(exc)
        for name, (flag, _) in OPTION_FLAGS.items():
            if text.startswith(f"{name}:") or text.startswith(f"{name} "):
                text = flag + text[len(name):]
                break
        raise InputError(text) from None
