"""Stage 4, weight-free: an edit instruction written from the sampled degradation."""

from __future__ import annotations

from synth.errors import ConfigError
from synth.sample import Sample
from synth.stages.base import Stage

# How each pattern family reads in an instruction; unknown families read as their name.
PATTERN_WORDS = {
    "venetian_blind": "striped",
    "tree_foliage": "dappled leaf",
    "geometric": "geometric",
    "window_frame": "window-frame",
    "branch": "branch",
    "curtain": "curtain",
    "fence": "fence",
    "voronoi": "cellular",
    "lattice": "lattice",
    "cloud": "cloud",
    "screen": "patterned screen",
}


# Where the light comes from, by azimuth sector (degrees counter-clockwise from the right).
LIGHT_WORDS = ("right-side", "upper-right", "top", "upper-left", "left-side", "lower-left", "bottom", "lower-right")


def _shadow_phrase(params: dict) -> str:
    """'the dark soft striped shadow' from a hard-shadow record."""
    blur, opacity = params.get("blur", 71), params.get("opacity", 0.5)
    edge = "crisp" if blur < 51 else "soft" if blur < 91 else "very soft"
    strength = "faint " if opacity < 0.4 else "dark " if opacity > 0.6 else ""
    pattern = PATTERN_WORDS.get(params.get("pattern"), str(params.get("pattern", "")).replace("_", " "))
    return f"the {strength}{edge} {pattern} shadow".replace("  ", " ")


def _light_phrase(params: dict) -> str:
    """'the strong upper-left lighting and highlights' from a soft-shading record."""
    elevation = params.get("elevation", 45)
    sector = int(((params.get("azimuth", 0) + 22.5) % 360) // 45)
    direction = "frontal" if elevation >= 65 else LIGHT_WORDS[sector]
    strength = "strong" if params.get("ambient", 0.7) < 0.7 else "soft"
    shine = " and highlights" if params.get("specular") else ""
    return f"the {strength} {direction} lighting{shine}"


def describe_degradation(sample: Sample) -> str:
    """A short noun phrase for what stage 3 did, e.g. 'the soft striped shadow', 'the strong
    left-side lighting', 'the soft top lighting and the faint dappled leaf shadow'."""
    params = sample.params.get("shadow", {})
    if "soft_shading" in params and "hard_shadow" in params:  # shadow=mix drew both
        return f"{_light_phrase(params['soft_shading'])} and {_shadow_phrase(params['hard_shadow'])}"
    if sample.degradation_type == "hard_shadow" or "pattern" in params:
        return _shadow_phrase(params)
    if "azimuth" in params:
        cast = params.get("cast_shadow")
        return _light_phrase(params) + (f" and {_shadow_phrase(cast)}" if cast else "")
    if sample.degradation_type:
        return f"the {sample.degradation_type.replace('_', ' ')}"
    return "the lighting change"


def check_template(template: str, fields: tuple[str, ...]) -> str:
    """``captioning.template``, unless it uses a placeholder other than ``fields``."""
    try:
        template.format(**{name: "x" for name in fields})
    except (KeyError, IndexError, ValueError) as err:
        allowed = ", ".join("{" + name + "}" for name in fields)
        raise ConfigError(f"captioning.template={template!r}: only {allowed} may be used ({err})") from None
    return template


class TemplateCaption(Stage):
    """Fills ``template`` with ``{degradation}`` (see :func:`describe_degradation`) and
    ``{subject}``. The default reads like an InstructPix2Pix edit instruction."""

    name = "captioning"
    requires = ("image",)
    provides = ("caption",)

    def __init__(self, template: str = "remove {degradation} from the {subject}", subject: str = "subject"):
        self.template, self.subject = check_template(template, ("degradation", "subject")), subject

    def process_sample(self, sample: Sample) -> None:
        sample.caption = self.template.format(degradation=describe_degradation(sample), subject=self.subject)
        sample.params[self.name] = {"method": "template", "subject": self.subject}
