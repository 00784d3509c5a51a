"""Captions for ``snakemake --report``: what each figure shows and which config made it.

The figure rules mark their PNG (or first format) with Snakemake's ``report()`` flag and
the generic caption template ``workflow/report/figure.rst``, which prints the caption
built here for ``family/name``. The workflow hands the captions to the template through
the config (key :data:`CONFIG_KEY`), not through rule params, so that editing a caption
never makes a figure stale.
"""

from __future__ import annotations

import os

import yaml

from memgen.provenance import params_hash

CONFIG_KEY = "_memgen_report"
DEFAULT_CONFIG = "config/config.yaml"  # the Snakefile's `configfile:`

TITLES = {
    "time_scale": "Lazy vs feature training: time scales on sparse parity (Geiger et al. 2019)",
    "kernels": "Kernels: empirical and infinite-width NTK / NNGP, linearized dynamics (seeds 001, 002)",
    "double_descent": "Epoch-wise and model-wise double descent (Heckel & Yilmaz 2021; Advani & Saxe 2020)",
    "curvature": "Curvature: inverse Hessian-vector products and influence functions (Koh & Liang 2017)",
}

# family -> figure -> what it shows (the config that produced it is added by figure_caption)
CAPTIONS = {
    "time_scale": {
        "loss_vs_time": (
            "Training loss alpha^2 L vs time t of one width and seed, one curve per scale alpha "
            "(colour): small alpha trains in the feature regime, large alpha in the lazy regime."
        ),
        "time_to_fit": (
            "Time t_fit at which every training margin is reached vs sqrt(h) alpha (article "
            "convention), seed mean with min-max bars, one series per width h: the widths collapse on "
            "one curve, whose change of slope marks the lazy/feature crossover."
        ),
        "kernel_change": (
            "Change of the NTK during training vs sqrt(h) alpha: left, relative change ||Theta_T - "
            "Theta_0|| / ||Theta_0||; right, change of its shape (normalised kernels). Large in the "
            "feature regime, vanishing in the lazy regime."
        ),
        "test_error": (
            "Test error at the end of training vs sqrt(h) alpha, per width (seed mean, min-max bars); "
            "dashed: the network's frozen NTK at init trained to the same criterion; red crosses mark "
            "diverged runs."
        ),
        "memorization_time": (
            "Time to memorise the training set (train error 0, filled) and time of the best test "
            "error (open) vs sqrt(h) alpha, per width."
        ),
    },
    "kernels": {
        "accuracy_vs_n": (
            "Test accuracy vs number of training points for empirical-NTK regression, the NNGP "
            "predictor (random hidden layers, last layer fitted by ridge), the infinite-width NTK and "
            "NNGP kernels and the GD-trained network; one panel per data set (digits; CIFAR-2 when "
            "its files are present). Mean over seeds with min-max bars."
        ),
        "ntk_convergence": (
            "Relative Frobenius distance between the empirical NTK of a width-h network and the "
            "analytic infinite-width NTK vs h, log-log, seed mean with min-max bars and the fitted "
            "slope (about -1/2 expected); the NNGP's for reference."
        ),
        "linearized_training": (
            "Left: train (solid) and test (dash-dot) loss vs time t = lr x steps of the network "
            "trained by gradient descent, and of its linearization around init (open markers: train, "
            "crosses: test), per width; right: ||w_lin(t) - w(t)|| / ||w(t) - w0||, which shrinks as "
            "the width grows."
        ),
    },
    "double_descent": {
        "epochwise_risk": (
            "Excess test risk of linear regression trained by gradient descent vs step: empirical "
            "mean with a 10-90% band over data draws, closed form (dashed) and its two feature-group "
            "contributions; a uniform step size shows epoch-wise double descent, per-group step sizes "
            "remove it."
        ),
        "two_layer_risk": (
            "Risk of the two-layer linear network vs step from a small and a large init, against the "
            "reduced (u, z) ODE and the linearised (lazy) network."
        ),
        "weight_error": (
            "Mean over each feature group of ((w_i - theta_i) / theta_i)^2 vs step: (a) linear "
            "gradient descent, (b) the two-layer network from the small init."
        ),
        "modelwise": (
            "Test risk vs n/p: (a) min-norm least squares, exact finite-p theory (lines) and "
            "simulations (markers, 10-90% bars), with its peak at n/p = 1; (b) oracle early-stopped "
            "gradient flow, where the peak is gone."
        ),
        "jacobian_spectrum": (
            "Singular values of the network Jacobian on the training set at init (open) and after "
            "training (filled), small and large init; (b) the share of each right singular vector on "
            "the first layer."
        ),
    },
    "curvature": {
        "lissa_scale": (
            "LiSSA iterates on the seed's two-dimensional quadratic toy, one series per scale "
            "(damping 0): path in the (x1, x2) plane and distance to the exact solution vs iteration; "
            "a scale at or below lambda_max / 2 diverges and is marked so."
        ),
        "lissa_damping": (
            "The same for several dampings at one scale: each converges to its own (H + damping I)^-1 "
            "v (stars), away from the undamped solution."
        ),
        "solver_accuracy": (
            "Relative error of the inverse-HVP vs number of Hessian-vector products, conjugate "
            "gradient vs LiSSA, per model."
        ),
        "influence_vs_loo": (
            "Predicted (influence function) vs actual (leave-one-out retraining) change of the test "
            "loss on removing each training point, per model, with Pearson's R (Koh & Liang, Fig. 2)."
        ),
        "helpful_harmful": (
            "A test image and the training images whose removal would most raise (helpful) or lower "
            "(harmful) its loss, by influence."
        ),
    },
}


def _escape(text: str) -> str:
    """Plain text as reStructuredText (``|x|`` and ``*`` are markup there)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def _literal(text: str, indent: str = "   ") -> str:
    return "\n".join(indent + line if line else "" for line in text.splitlines())


def figure_caption(family: str, name: str, block: dict, source: str) -> str:
    """reStructuredText caption of figure ``name`` of ``family``: what it shows, then the
    config file(s) (``source``, see :func:`config_source`) and the family's config block
    (with its sha256) that produced it."""
    text = yaml.safe_dump(block, sort_keys=True, default_flow_style=None, width=100).rstrip()
    return (f"**{TITLES[family]}** -- ``{name}``\n\n"
            f"{_escape(CAPTIONS[family][name])}\n\n"
            f"Produced from config {source}, block ``{family}`` "
            f"(sha256 ``{params_hash(block)[:12]}``):\n\n"
            f".. code-block:: yaml\n\n{_literal(text)}\n")


def config_source(configfiles: list[str], default: str = DEFAULT_CONFIG) -> str:
    """The config files of a run as a reader needs them: Snakemake loads the workflow's
    ``configfile:`` (``default``) and puts the ``--configfile`` files on top of it."""
    files = [os.path.relpath(f) for f in configfiles]
    given = [f for f in files if f != default]
    if not given:
        return default
    return ", ".join(given) + (f" (on top of {default})" if default in files else "")


def report_info(config: dict, configfiles: list[str]) -> dict:
    """What the report templates read from ``config[CONFIG_KEY]``: the config files (as
    Snakemake lists them: ``workflow.configfiles``), the family titles, and every figure's
    caption keyed ``family/name``."""
    families = config["families"]
    source = config_source(configfiles)
    return {
        "configfiles": source,
        "titles": {f: TITLES[f] for f in families},
        "captions": {f"{f}/{name}": figure_caption(f, name, config[f], source)
                     for f in families for name in CAPTIONS[f]},
    }
