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


def describe_degradation(sample: Sample) -> str:
    """A short noun phrase for what stage 3 did, e.g. 'the soft striped shadow'."""
    params = sample.params.get("shadow", {})
    if sample.degradation_type == "hard_shadow" or "pattern" in params:
        blur, opacity = params.get("blur", 71), params.get("opacity", 0.35)
        edge = "crisp" if blur < 51 else "soft" if blur < 91 else "very soft"
        strength = "faint " if opacity < 0.3 else "dark " if opacity > 0.42 else ""
        pattern = PATTERN_WORDS.get(params.get("pattern"), str(params.get("pattern", "")).replace("_", " "))
        return f"the {strength}{edge} {pattern} shadow".replace("  ", " ")
    if sample.degradation_type:
        return f"the {sample.degradation_type.replace('_', ' ')}"
    return "the lighting change"


class TemplateCaption(Stage):
    """Fills ``template`` with ``{degradation}`` (see :func:`describe_degradation`) and
    ``{subject}``. The default reads like an InstructPix2Pix edit instruction."""

    name = "captioning"
    requires = ("image",)
    provides = ("caption",)

    def __init__(self, template: str = "remove {degradation} from the {subject}", subject: str = "subject"):
        try:
            template.format(degradation="x", subject="y")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"captioning.template={template!r}: only {{degradation}} and {{subject}} may be used ({err})")
        self.template, self.subject = template, subject

    def process_sample(self, sample: Sample) -> None:
        sample.caption = self.template.format(degradation=describe_degradation(sample), subject=self.subject)
        sample.params[self.name] = {"method": "template", "subject": self.subject}
