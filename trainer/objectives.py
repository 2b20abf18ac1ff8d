"""The dGRPO objective in one place: group-relative advantages, GRPO's clipped surrogate, and the
beta-weighted KL to the teacher on the student's own tokens. Must not touch models or data.

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t ( min(rho_it A_it, clip(rho_it, 1-eps_low, 1+eps_high) A_it)
                                             - beta KL(pi_theta(.|p,o_i,<t) || pi_teacher(.|p,o_i,<t)) ) ]

with rho_it = pi_theta / pi_theta_old. GRPO is beta = 0; on-policy distillation is reward weight 0.
The loss returned is -J (summed over the micro-batch, divided by the step's global normalizer so
micro-batches and ranks add up to exactly the step's objective).

Which teacher terms are allowed (config.TEACHER_TERMS). The update never differentiates through the
sampling distribution, so its expected gradient per state is E_{y~p}[grad of the token's term]
(combine = loss) or -E_{y~p}[term(y) grad log p(y)] (combine = advantage, the term detached). With
p = pi_theta, q = pi_teacher, both at the sampling temperature, and d = log p(y) - log q(y):
  full/topk, loss:  grad KL_exact(s), exactly (reverse or forward; topk: of the K+1-bucket KL)
  k2 = d^2/2, loss: E_p[d grad log p] = grad KL(p || q)            (reverse)
  k1 = d, advantage: E_p[d grad log p] = grad KL(p || q)           (reverse; k1 as a loss: E_p[grad log p] = 0)
  k3 = e^-d - 1 + d, loss: E_p[(1 - q/p) grad log p] = grad KL(q || p)   (forward, not reverse)
The exact KL in the advantage is a function of the state only: E_p[KL(s) grad log p] = 0.

Options of the on-policy distillation family (each one config key, neutral at its default):
  vOPD, objective.baseline = "exact_kl" (on-policy distillation with a control-variate baseline;
    "vOPD", 2026): with k1 in the advantage the per-token advantage is
        A_it = A_i - beta (d_it - KL(s_it)),   KL(s) = sum_v p(v|s) log p(v|s)/q(v|s) = E_p[d | s]
    The baseline depends on the state only, so E_p[(d - KL) grad log p] = E_p[d grad log p]: the
    gradient stays unbiased (still the reverse-KL gradient) with less variance.
  TOPD / POPD, objective.horizon[_final, _steps] (truncated / progressive rollout horizon for
    distillation): the teacher term only on tokens t < h,
        KL_it <- KL_it 1[t < h(step)],   h(step) = h0 + (h1 - h0) min(1, (step - 1) / steps)
    (TOPD: steps = 0, h fixed). For pure OPD (every reward weight 0) the rollout stops at h too.
  G-OPD / ExOPD, objective.reward_scale = lambda, objective.reference (generalized on-policy
    distillation with reward extrapolation, 2026): the sampled-token reward
        r_it = lambda (log q - log pi_ref) - (log p - log pi_ref),  term = -r = d + (lambda - 1)(log pi_ref - log q)
    lambda = 1 is OPD whatever the reference; lambda > 1 pushes past the teacher away from the
    reference (ExOPD: the student's initial weights). E_p[term grad log p] is the gradient of
    KL(p || ref) - lambda E_p[log q/ref]: the reverse KL to q^lambda ref^(1-lambda), renormalized.
  TIP, objective.token_select / token_fraction (token importance in on-policy distillation; Xu et
    al., 2026, arXiv 2604.14084): the teacher term on the selected tokens only,
        KL_it <- KL_it 1[(i, t) in S],  |S| = ceil(fraction x tokens of the micro-batch)
    S by student entropy H_it (entropy), teacher-student divergence D_it (divergence: the exact
    per-token KL when the head gives one, else |log p - log q| of the sampled token), the
    low-entropy high-divergence tokens (overconfident: H <= median H, top D), or half each (tip).
  REOPOLD, objective.mixture_clip = alpha, objective.relax_steps (relaxed on-policy distillation;
    Ko et al., 2026, arXiv 2603.11137), as we read it: the reward log q/p measured against the
    mixture m = alpha q + (1 - alpha) p,
        r_it = log(m / p) = log(alpha e^(log q - log p) + 1 - alpha) >= log(1 - alpha),  term = -r
    (negative rewards clipped smoothly, positive ones kept: log(1 + alpha (q/p - 1))), entropy-based
    token-level dynamic sampling as token_select = "entropy", and exploration-to-refinement: the
    relaxations for the first relax_steps steps, plain OPD on every token after.
  Divergence, objective.direction = "jsd" with jsd_beta = b (GKD's generalized JSD, TRL's
    convention), exact over the vocabulary through the policy head (full) or on the top-k buckets:
        JSD_b(s) = b KL(q || m) + (1 - b) KL(p || m),  m = (1 - b) p + b q
    with gradient (1 - b) p_j (log p_j/m_j - KL(p || m)) per logit (the head's backward).
"""

from __future__ import annotations

import math

import torch

from trainer.config import ObjectiveConfig


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor | None = None, *, scale_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g r) [/ (std_g r + eps)] over each group's valid members; rewards is
    [groups, G]. A group with zero reward variance (or fewer than two valid members) gets A = 0:
    it carries no outcome signal. Invalid members (a failed reward) get A = 0."""
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    r = torch.where(valid, rewards, 0.0).double()
    count = valid.sum(-1, keepdim=True)
    mean = r.sum(-1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(valid, r - mean, 0.0)
    # Unbiased std over the group, as GRPO (and TRL, verl) compute it.
    std = (centered.pow(2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    advantages = centered / (std + eps) if scale_std else centered
    no_signal = (count < 2) | (std <= eps)
    return torch.where(valid & ~no_signal, advantages, 0.0).to(rewards.dtype)


def rollout_advantages(rewards: list[float], valid: list[bool], group_sizes: list[int], *,
                       scale_std: bool = True) -> tuple[list[float], int]:
    """`group_advantages` over rollouts laid out group after group (sizes may differ, e.g. replayed
    groups): (one advantage per rollout, number of groups whose valid rewards do not vary)."""
    width = max(group_sizes, default=1)
    matrix = torch.zeros(len(group_sizes), width, dtype=torch.float64)
    ok = torch.zeros(len(group_sizes), width, dtype=torch.bool)
    slots = [(g, j) for g, size in enumerate(group_sizes) for j in range(size)]
    for (g, j), reward, good in zip(slots, rewards, valid):
        matrix[g, j] = reward if good else 0.0
        ok[g, j] = good
    advantages = group_advantages(matrix, ok, scale_std=scale_std)
    kept = matrix.masked_fill(~ok, float("nan"))
    flat = [kept[g][~kept[g].isnan()] for g in range(len(group_sizes))]
    zero_variance = sum(1 for row in flat if row.numel() < 2 or bool((row == row[0]).all()))
    return [float(advantages[g, j]) for g, j in slots], zero_variance


def sampled_kl(logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates from the sampled token only (Schulman's k1, k2, k3 with
    log r = log pi_teacher - log pi_theta); each value estimates KL(pi_theta || pi_teacher):
      k1 = -log r            unbiased, can be negative; its gradient is valid only in the advantage
      k2 = (log r)^2 / 2     biased value; as a loss its expected gradient is the reverse-KL gradient
      k3 = (r - 1) - log r   unbiased value, >= 0; as a loss its expected gradient is the FORWARD-KL one"""
    log_r = teacher_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.pow(2)
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"sampled-token estimator must be k1, k2 or k3, got {estimator!r}")


def teacher_input(cfg: ObjectiveConfig) -> str:
    """What the policy head needs for the teacher term: 'hidden' (the local teacher's last hidden
    states and head: exact full-vocabulary KL), 'topk' (the teacher's top-k log-probs and tail),
    'sampled' (the teacher's log-prob of each sampled token: k1/k2/k3), or 'none' (beta = 0)."""
    if cfg.beta == 0:
        return "none"
    if cfg.baseline == "exact_kl":  # vOPD: the head gives the exact KL and the teacher's log-prob of each token
        return "hidden"
    return {"full": "hidden", "topk": "topk"}.get(cfg.estimator, "sampled")


def kl_term(cfg: ObjectiveConfig, logprobs: torch.Tensor, *, kl: torch.Tensor | None = None,
            teacher_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """The per-token teacher term [S, T]: the head's exact KL (full/topk) or a sampled-token
    estimator of it (k1/k2/k3) from the student's and the teacher's log-prob of each token."""
    if cfg.estimator in ("full", "topk"):
        if kl is None:
            raise ValueError(f"estimator {cfg.estimator!r} needs the per-token kl from the policy head")
        return kl
    if teacher_logprobs is None:
        raise ValueError(f"estimator {cfg.estimator!r} needs teacher_logprobs")
    return sampled_kl(logprobs, teacher_logprobs, cfg.estimator)


def horizon_tokens(cfg: ObjectiveConfig, step: int, max_new_tokens: int) -> int | None:
    """h(step) in tokens for TOPD/POPD (None: the whole rollout). `step` counts from 1."""
    if cfg.horizon == 0:
        return None
    def tokens(h: float) -> int:
        return max(1, round(h * max_new_tokens) if h <= 1 else int(h))
    start = tokens(cfg.horizon)
    if not cfg.horizon_steps:
        return min(start, max_new_tokens)
    final = tokens(cfg.horizon_final)
    grown = start + (final - start) * min(1.0, (step - 1) / cfg.horizon_steps)
    return min(int(round(grown)), max_new_tokens)


def select_tokens(cfg: ObjectiveConfig, mask: torch.Tensor, entropy: torch.Tensor,
                  divergence: torch.Tensor) -> torch.Tensor:
    """TIP's token selection [S, T] (bool): ceil(token_fraction x trained tokens) of `mask`'s tokens
    by `cfg.token_select` (see the module docstring); ties by position, so it is deterministic."""
    n = int(mask.sum())
    k = math.ceil(cfg.token_fraction * n)
    if cfg.token_select == "none" or k >= n:
        return mask.clone()
    flat_mask, h, d = mask.reshape(-1), entropy.detach().reshape(-1).double(), divergence.detach().reshape(-1).double()
    low = flat_mask & (h <= h[flat_mask].median())  # the low-entropy half (n > 0 here)

    def top(score: torch.Tensor, allowed: torch.Tensor, count: int) -> torch.Tensor:
        count = min(count, int(allowed.sum()))
        chosen = torch.zeros_like(allowed)
        if count > 0:
            order = torch.sort(torch.where(allowed, score, -math.inf), descending=True, stable=True).indices
            chosen[order[:count]] = True
        return chosen

    if cfg.token_select == "entropy":
        chosen = top(h, flat_mask, k)
    elif cfg.token_select == "divergence":
        chosen = top(d, flat_mask, k)
    elif cfg.token_select == "overconfident":
        chosen = top(d, low, k)
    else:  # tip: half the budget to the highest entropy, the rest to the overconfident tokens left
        chosen = top(h, flat_mask, k // 2)
        chosen |= top(d, low & ~chosen, k - int(chosen.sum()))
    return chosen.reshape(mask.shape)


def normalizer(cfg: ObjectiveConfig, mask: torch.Tensor) -> float:
    """The step's denominator for `dgrpo_loss` computed over a whole step's mask [S, T]: sequences
    with at least one trained token (seq-mean, seq-sum-norm) or trained tokens (token-mean)."""
    sequences = float((mask.sum(-1) > 0).sum())
    if cfg.aggregation == "token-mean":
        return float(mask.sum())
    return sequences * (cfg.norm_constant if cfg.aggregation == "seq-sum-norm" else 1.0)


def dgrpo_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    cfg: ObjectiveConfig, *, kl: torch.Tensor | None = None, teacher_logprobs: torch.Tensor | None = None,
    denominator: float | None = None, horizon: int | None = None, entropy: torch.Tensor | None = None,
    reference_logprobs: torch.Tensor | None = None, relaxed: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(-J summed over these sequences / denominator, per-token sums for metrics).

    logprobs, old_logprobs, mask: [S, T] over completion tokens; advantages: [S] (one per
    sequence, group-relative). The teacher term is `kl` [S, T] (exact per-token KL, estimators
    full/topk) or computed here from `teacher_logprobs` [S, T] (k1/k2/k3). combine="loss" subtracts
    beta*KL from the objective (the paper); combine="advantage" folds it into a per-token advantage
    A_it - beta*KL_it (detached), which for k1 is A_it - beta (log pi_theta - log pi_teacher).
    `denominator` defaults to `normalizer(cfg, mask)` (a step of one micro-batch). vOPD
    (cfg.baseline = "exact_kl") takes the exact per-token KL in `kl` beside `teacher_logprobs`;
    `horizon` (TOPD/POPD, see `horizon_tokens`) keeps the teacher term on the first h completion
    tokens of each sequence (positions counted over the mask). G-OPD (cfg.reward_scale != 1) takes
    the reference's log-prob of each token in `reference_logprobs`; TIP/REOPOLD's selection the
    student's per-token `entropy` [S, T]; `relaxed` is False in REOPOLD's refinement phase (no
    mixture clipping, no token selection)."""
    maskf = mask.to(logprobs.dtype)
    if cfg.beta > 0:
        exact = kl
        kl = torch.where(mask, kl_term(cfg, logprobs, kl=kl, teacher_logprobs=teacher_logprobs), 0.0)
        term = kl  # what enters the objective; `kl` stays the reported estimate
        active = mask.bool()  # tokens the teacher term is trained on
        if cfg.reward_scale != 1:  # G-OPD: -(lambda (log q - log ref) - (log p - log ref))
            if reference_logprobs is None:
                raise ValueError("objective.reward_scale != 1 (G-OPD) needs reference_logprobs")
            term = logprobs - cfg.reward_scale * teacher_logprobs + (cfg.reward_scale - 1) * reference_logprobs
        if cfg.mixture_clip < 1 and relaxed:  # REOPOLD: -log(alpha q/p + 1 - alpha)
            log_ratio = torch.where(mask, teacher_logprobs - logprobs, 0.0)
            floor = torch.full_like(log_ratio, math.log1p(-cfg.mixture_clip))
            term = -torch.logaddexp(log_ratio + math.log(cfg.mixture_clip), floor)
        if cfg.baseline == "exact_kl":
            if exact is None:
                raise ValueError("baseline 'exact_kl' (vOPD) needs the exact per-token kl from the policy head")
            term = term - torch.where(mask, exact, 0.0).detach()
        if horizon is not None:
            position = torch.cumsum(mask.long(), dim=-1) - 1  # index among the completion's tokens
            active = active & (position < horizon)
        if cfg.token_select != "none" and relaxed:  # TIP / REOPOLD's token-level dynamic sampling
            if entropy is None:
                raise ValueError(f"token_select = {cfg.token_select!r} needs the per-token entropy")
            divergence = exact if exact is not None else (logprobs - teacher_logprobs).abs()
            active = active & select_tokens(cfg, mask, entropy, divergence)
        term = torch.where(active, term, 0.0)  # active is within mask: padding never enters
    else:
        kl = term = torch.zeros_like(logprobs)
        active = torch.zeros_like(mask)

    token_advantages = advantages[:, None].to(logprobs.dtype).expand_as(logprobs)
    if cfg.combine == "advantage":
        token_advantages = token_advantages - cfg.beta * term.detach()
    ratio = torch.exp(torch.where(mask, logprobs - old_logprobs, 0.0))  # padding cannot overflow
    unclipped = ratio * token_advantages
    clipped = torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high) * token_advantages
    surrogate = torch.minimum(unclipped, clipped)
    per_token = surrogate - cfg.beta * term if cfg.combine == "loss" else surrogate

    if cfg.aggregation == "seq-mean":
        lengths = maskf.sum(-1)
        per_sequence = (per_token * maskf).sum(-1) / lengths.clamp(min=1)
        objective = per_sequence.sum()
    else:  # token-mean and seq-sum-norm both sum every token; they differ in the denominator
        objective = (per_token * maskf).sum()
    denominator = normalizer(cfg, mask) if denominator is None else denominator
    loss = -objective / max(denominator, 1e-12)

    with torch.no_grad():
        clipped_low = (ratio < 1 - cfg.eps_low) & (token_advantages < 0)
        clipped_high = (ratio > 1 + cfg.eps_high) & (token_advantages > 0)
        stats = {
            "tokens": maskf.sum(),
            "kl_sum": (kl * maskf).sum(),
            "clip_low_sum": (clipped_low & mask.bool()).sum().to(logprobs.dtype),
            "clip_high_sum": (clipped_high & mask.bool()).sum().to(logprobs.dtype),
            "ratio_sum": (ratio * maskf).sum(),
            "distill_tokens": active.sum().to(logprobs.dtype),
        }
    return loss, stats
