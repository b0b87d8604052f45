"""The words beside compare's figures and above its tables, written from
results["settings"] so that they describe the run they come with: the data, what each
margin parameter does, and one caption per figure, naming only the losses that ran."""

from __future__ import annotations

from .margins import Margin


def data_summary(settings: dict) -> str:
    """One sentence on the data and the split, from results["settings"]."""
    if settings["dataset"] == "synthetic":
        data = (f"synthetic data, {settings['identities']} identities × "
                f"{settings['samples_per_identity']} samples of {settings['feature_dim']} "
                "features")
        kind = "identities"
    else:
        data, kind = "scikit-learn's 8×8 digits", "digits"
    return (f"{data}: trained on {settings['train_identities']} {kind} "
            f"({settings['train_samples']} samples, {settings['closed_set_test_samples']} more "
            f"held back for the accuracy); {settings['held_out_identities']} {kind} never seen "
            f"in training give the {settings['trials']} verification trials, "
            f"{settings['target_trials']} of them target")


def margin_terms(margins: list[Margin]) -> str:
    """What each margin parameter in use does to psi, e.g. "m3 lowers the curve by the same
    amount at every angle"; "" when no margin uses any."""
    terms = [text for used, text in (
        (any(m.m3 for m in margins), "m3 lowers the curve by the same amount at every angle"),
        (any(m.m2 for m in margins), "m2 shifts it by an angle"),
        (any(m.m1 != 1 for m in margins), "m1 multiplies the angle"),
    ) if used]
    return ", ".join(terms)


def figure_texts(
    settings: dict, margins: dict[str, Margin | None], sub_centres: bool = False
) -> list[tuple[str, str, str]]:
    """(file name, alt text, caption) of each figure. margins: the target-logit figure's
    curves (label -> Margin, None where the margin varies per sample); sub_centres: whether
    some head of the 2-D run has several centres per class. A caption names only losses of
    this run (settings["heads"])."""
    seed = settings["figure_seed"]
    classes, samples = settings["classes_2d"], settings["samples_2d"]
    if settings["dataset"] == "synthetic":
        data_2d = f"{classes} other synthetic identities × {samples // classes} samples"
    else:
        data_2d = f"the {classes} training digits, {samples} samples"
    circle = (
        f"A second run per loss with 2-D embeddings, at seed {seed} ({data_2d}; "
        f"{settings['train_2d']['epochs']} epochs), small enough to draw; the table comes from "
        "the main runs. Each sample is normalised onto the unit circle (dots, coloured by "
        "class); the lines are the directions of the class centres (the head's weight rows, "
        "in the colour of their class). Each panel's title gives the mean angle between a "
        "sample and its own class centre: the smaller, the more tightly the loss gathers each "
        "class around its centre, which is what a margin asks for."
    )
    if "softmax" in settings["heads"]:
        circle += (" Softmax has a bias and unnormalised weights, so its classes need not sit "
                   "on its lines.")
    if sub_centres:
        circle += " Heads with sub-centres draw a line per sub-centre; the angle is to the nearest."
    drawn = [m for m in margins.values() if m is not None and not m.is_identity]
    plain = [name for name, m in margins.items() if m is not None and m.is_identity]
    varying = [name for name, m in margins.items() if m is None]
    curves = (
        f"ψ(θ), the target-class logit divided by the scale s, of each loss as trained at seed "
        f"{seed}, against the angle θ between an embedding and its class centre. The thick "
        "grey line is cos θ, the target logit without a margin"
        + (f" ({', '.join(plain)})." if plain else ".")
    )
    if "softmax" in plain:
        curves += (" Softmax has no margin either, though its logit |x||w|·cos θ + b has no "
                   "fixed scale.")
    if drawn:
        curves += (" A curve below the grey line is a margin: the loss scores the sample as if "
                   "it were further from its centre, so it keeps pulling it in. The labels give "
                   "each margin as ψ = cos(m1·θ + m2) − m3, in radians: "
                   f"{margin_terms(drawn)}.")
    if any(m.blend for m in drawn):
        curves += (" SphereFace is drawn with the annealing weight λ it ended training with: "
                   "ψ = (λ·cos θ + ψ_SphereFace) / (1 + λ).")
    if any(m.fallback == "seed" for m in drawn):
        curves += (" The small step near 180° − m2 is a fallback: where θ + m2 would pass "
                   "180°, ψ = cos θ − m2·sin m2.")
    if varying:
        curves += (f" Not drawn, because their margin varies from sample to sample: "
                   f"{', '.join(varying)}.")
    nontargets = settings["trials"] - settings["target_trials"]
    scores = (
        f"Histograms of the cosine scores of seed {seed}'s {settings['trials']} verification "
        f"trials, {settings['target_trials']} target (two samples of one identity) and "
        f"{nontargets} non-target, among the {settings['held_out_identities']} identities held "
        "out of training. The density axis is logarithmic, so the tails, where the two "
        "overlap, show; all panels share both axes. The dashed line is the threshold at the "
        "loss's EER (in the panel's title): non-target scores right of it are false accepts, "
        "target scores left of it false rejects. The less the two overlap, the fewer errors "
        "any threshold makes; what matters is the overlap, not where either peak sits."
    )
    det = (
        f"DET curves of the same trials (seed {seed}): the false-reject rate against the "
        "false-accept rate as the threshold moves, both on a probit (normal-deviate) scale "
        "with ticks in percent, as in speaker verification; scores with roughly normal "
        "distributions give straight lines. Lower left is better. Each dot is a loss's EER at "
        "this seed, where its curve meets the diagonal (also in the legend; the table gives "
        "the mean over the seeds); the dotted vertical line is FAR = 0.1%, where "
        "TAR@FAR=1e-3 is 100% minus the curve's false-reject rate. With "
        f"{nontargets} non-target and {settings['target_trials']} target trials, "
        f"rates below {100 / max(min(nontargets, settings['target_trials']), 1):.2g}% "
        "cannot be measured."
    )
    texts = [
        ("unit_circle.png", "2-D embeddings on the unit circle, one panel per loss", circle),
        ("target_logit.png", "Target-logit curves psi(theta), one per loss", curves),
        ("scores.png", "Histograms of target and non-target scores, one panel per loss", scores),
        ("det.png", "DET curves of every loss on probit axes", det),
    ]
    calibration = settings["calibration"]
    if calibration is not None:
        texts.append(("calibration.png", "Normalised Bayes error rate of every loss after "
                      "calibration", calibration_caption(calibration, seed)))
    return texts


def calibration_caption(calibration: dict, seed: int) -> str:
    """The caption of the Bayes error-rate plot, from results["settings"]["calibration"]."""
    return (
        f"The calibration at seed {seed}: each loss's cosine scores mapped to log-likelihood "
        "ratios by a linear calibration (llr = a·score + b, least Cllr) fitted on the "
        f"{calibration['dev_trials']} trials among {calibration['dev_identities']} of the "
        "held-out identities, drawn on the "
        f"{calibration['eval_trials']} trials ({calibration['eval_target_trials']} target) "
        f"among the other {calibration['eval_identities']}. For each prior log-odds "
        "log(p / (1 − p)) on the x axis, the solid line is the actual DCF, deciding at the "
        "Bayes threshold the LLRs give, and the dashed line the minimum DCF over all "
        "thresholds, both normalised as minDCF; the gap between a loss's two lines is what "
        "its calibration loses at that prior. The dotted line at 1 is a system that ignores "
        "the trials; the grey verticals are the table's p_target 0.01 and 0.05."
    )
