"""Stage 4, weight-free: an edit instruction written from the sampled degradation and its
measured visibility (a shadow on a small part of the subject reads "a few thin branch shadows")."""

from __future__ import annotations

import string

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


# Families whose shadow is many parts: on a small part of the subject it reads "a few ... shadows";
# the others read "a small ... shadow". Thin ones say so.
MANY_PARTS = {"branch", "venetian_blind", "window_frame", "fence", "voronoi", "lattice", "screen", "tree_foliage"}
THIN = {"branch", "window_frame", "voronoi"}
SMALL = 0.15  # shadowed share of the subject (``visibility``) below which a shadow is "a few" / "small"


# Where the light comes from, by azimuth sector (degrees counter-clockwise from the right).
LIGHT_WORDS = ("right-side", "upper-right", "top", "upper-left", "left-side", "lower-left", "bottom", "lower-right")


def _shadow_phrase(params: dict, seen: dict | None = None) -> str:
    """'the dark soft striped shadow' from a hard-shadow record, or 'a few thin branch shadows'
    when its measured ``visibility`` (``seen``) covers a small part of the subject."""
    blur = params.get("blur_used", params.get("blur", 71))
    edge = "crisp" if blur < 51 else "soft" if blur < 91 else "very soft"
    if seen and seen.get("mean_drop"):  # what the eye sees: the luma drop inside the shadow
        strength = "faint " if seen["mean_drop"] < 0.25 else "dark " if seen["mean_drop"] > 0.4 else ""
    else:
        opacity = params.get("opacity", 0.5)
        strength = "faint " if opacity < 0.4 else "dark " if opacity > 0.6 else ""
    name = params.get("pattern")
    pattern = PATTERN_WORDS.get(name, str(name or "").replace("_", " "))
    if seen and seen.get("shadowed", 1.0) < SMALL:
        if name in MANY_PARTS:
            return f"a few {strength}{'thin ' if name in THIN else ''}{pattern} shadows".replace("  ", " ")
        return f"a small {strength}{edge} {pattern} shadow".replace("  ", " ")
    return f"the {strength}{edge} {pattern} shadow".replace("  ", " ")


def _light_phrase(params: dict, seen: dict | None = None) -> str:
    """'the strong upper-left lighting and highlights' from a soft-shading record (strength from
    its measured ``change`` when there is one)."""
    elevation = params.get("elevation", 45)
    sector = int(((params.get("azimuth", 0) + 22.5) % 360) // 45)
    direction = "frontal" if elevation >= 65 else LIGHT_WORDS[sector]
    if seen and "change" in seen:
        strength = "strong" if seen["change"] >= 0.12 else "soft"
    else:
        strength = "strong" if params.get("ambient", 0.7) < 0.7 else "soft"
    shine = " and highlights" if params.get("specular") else ""
    return f"the {strength} {direction} lighting{shine}"


def describe_degradation(sample: Sample) -> str:
    """A short noun phrase for what stage 3 did, e.g. 'the soft striped shadow', 'the strong
    left-side lighting', 'the soft top lighting and the faint dappled leaf shadow'."""
    params = sample.params.get("shadow", {})
    seen = params.get("visibility")  # measured on the whole degradation (synth.stages.shadow.visibility)
    if "soft_shading" in params and "hard_shadow" in params:  # shadow=mix drew both
        # The measure covers light and shadow together: it sizes neither part on its own.
        return f"{_light_phrase(params['soft_shading'])} and {_shadow_phrase(params['hard_shadow'])}"
    if sample.degradation_type == "hard_shadow" or "pattern" in params:
        return _shadow_phrase(params, seen)
    if "azimuth" in params:
        cast = params.get("cast_shadow")
        return _light_phrase(params, seen) + (f" and {_shadow_phrase(cast)}" if cast else "")
    if sample.degradation_type:
        return f"the {sample.degradation_type.replace('_', ' ')}"
    return "the lighting change"


def check_template(template: str, fields: tuple[str, ...]) -> str:
    """``captioning.template``, unless it is not text, is blank or uses anything but the plain
    placeholders ``fields``: ``{degradation.upper}``, ``{degradation[0]}``, ``{subject!r}`` or
    ``{subject:>9}`` would each write a mangled caption into every sample."""
    allowed = ", ".join("{" + name + "}" for name in fields)
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"captioning.template={template!r}: must be text using {allowed}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:  # a stray { or }
        raise ConfigError(f"captioning.template={template!r}: only {allowed} may be used ({err})") from None
    for _, name, spec, conversion in parsed:
        if name is None:  # literal text
            continue
        if name not in fields:
            raise ConfigError(f"captioning.template={template!r}: only {allowed} may be used ({name!r})")
        if spec or conversion:
            shown = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
            raise ConfigError(f"captioning.template={template!r}: only {allowed} may be used, as they are "
                              f"({shown} has a conversion or format)")
    return template


def check_subject(subject: object) -> str:
    """``captioning.subject``: text (a number Hydra parsed is taken as its text), never a list
    or mapping that would be written into every caption as Python's repr."""
    if isinstance(subject, bool) or not isinstance(subject, (str, int, float)) or not str(subject).strip():
        raise ConfigError(f"captioning.subject={subject!r}: must be text, e.g. captioning.subject=person")
    return str(subject)


class TemplateCaption(Stage):
    """Fills ``template`` with ``{degradation}`` (see :func:`describe_degradation`) and
    ``{subject}``. The default reads like an InstructPix2Pix edit instruction."""

    name = "captioning"
    requires = ("image",)
    provides = ("caption",)

    def __init__(self, template: str = "remove {degradation} from the {subject}", subject: str = "subject"):
        self.template = check_template(template, ("degradation", "subject"))
        self.subject = check_subject(subject)

    def process_sample(self, sample: Sample) -> None:
        sample.caption = self.template.format(degradation=describe_degradation(sample), subject=self.subject)
        sample.params[self.name] = {"method": "template", "subject": self.subject}
