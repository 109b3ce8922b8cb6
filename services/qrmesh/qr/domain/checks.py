"""Design checks that need no rendering: contrast, inverted colors, and the logo against the error budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qrmesh.qr.domain.design import Design, ErrorCorrection, contrast_ratio
from qrmesh.qr.domain.matrix import Symbol, function_mask
from qrmesh.qr.domain.scene import LogoPlacement

MIN_CONTRAST = 4.0
BUDGET_SAFETY = 0.8
"""Share of the nominal error budget a logo may use. A logo's edge cuts codewords partially, and each
partly hidden codeword is lost whole, so the modules hidden understate the codewords lost; the rest of
the budget is left for print flaws, glare and wear."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that makes a code hard or impossible to scan."""

    reason: str
    message: str


def lowest_contrast(design: Design) -> float:
    """The WCAG contrast ratio of the dark color (of all used) closest to the background."""
    background = design.effective_background
    return min(contrast_ratio(color.over(background), background) for color in design.dark_colors())


def logo_coverage(symbol: Symbol, placement: LogoPlacement | None) -> float:
    """The share of data and error-correction modules the logo and its margin cover."""
    if placement is None:
        return 0.0
    data = ~function_mask(symbol.version)
    return float(np.count_nonzero(placement.covered & data)) / float(np.count_nonzero(data))


def logo_budget(level: ErrorCorrection) -> float:
    """The share of data modules a logo may cover at `level`, safety margin included."""
    return level.restorable * BUDGET_SAFETY


def design_problems(symbol: Symbol, design: Design, placement: LogoPlacement | None) -> list[Problem]:
    """LOW_CONTRAST, INVERTED_COLORS and LOGO_OVER_BUDGET problems of a laid-out design."""
    problems = []
    background = design.effective_background
    ratio = lowest_contrast(design)
    if ratio < MIN_CONTRAST:
        problems.append(
            Problem("LOW_CONTRAST", f"the colors contrast {ratio:.2f}:1; scanners need at least {MIN_CONTRAST:g}:1")
        )
    if any(c.over(background).luminance() > background.luminance() for c in design.dark_colors()):
        problems.append(
            Problem("INVERTED_COLORS", "the code is lighter than its background; many scanners cannot read it")
        )
    coverage = logo_coverage(symbol, placement)
    budget = logo_budget(symbol.error_correction)
    if coverage > budget:
        problems.append(
            Problem(
                "LOGO_OVER_BUDGET",
                f"the logo covers {coverage:.0%} of the data modules; error correction "
                f"{symbol.error_correction.value} can safely restore {budget:.0%}",
            )
        )
    return problems
