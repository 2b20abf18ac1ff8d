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
    gradient stays unbiased (still the reverse-KL gradient); its variance is lower in most states but
    not in all (an exact count over random small vocabularies finds states where it is higher).
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
    al., 2026, arXiv 2604.14084; read: the abstract and summaries): the teacher term on the selected
    tokens only, as a mean over them,
        KL_it <- KL_it 1[(i, t) in S] n / |S|,  |S| = ceil(fraction x n),  n = trained tokens of the micro-batch
    S by student entropy H_it (entropy), teacher-student divergence D_it (divergence: the exact
    per-token KL when the head gives one, else |log p - log q| of the sampled token), the
    low-entropy high-divergence tokens (overconfident: H <= median H, top D), or half each (tip).
    The paper trains on the retained tokens alone (its memory savings come from dropping the rest);
    we read that as the term's mean over S, so beta keeps its weight whatever the fraction (an
    earlier version divided by all n tokens: a strength of beta x fraction).
  REOPOLD, objective.mixture_clip = lambda, objective.relax_steps (relaxed on-policy distillation;
    Ko et al., 2026, arXiv 2603.11137). Read: the abstract and public summaries (section 3's equations
    were not reachable from here): the token reward is r = log q - log p, negative rewards are clipped
    from below through a mixture coefficient, high-entropy tokens are sampled, and training moves from
    exploration (relaxed) to refinement (plain OPD). Reading chosen, as two other public
    implementations read it: a floor on the reward, positive rewards untouched,
        r_it = max(log q - log p, log(lambda / (1 - lambda))),  term = -r,  lambda in (0, 1/2]
    (lambda = 1/2: negative rewards become 0). The smooth mixture log(lambda q/p + 1 - lambda) of an
    earlier version is not kept: it also shrinks positive rewards (+1 becomes +0.295 at lambda 0.2).
    Token-level dynamic sampling is token_select = "entropy" (the TIP machinery below), and
    exploration-to-refinement is relax_steps: the relaxations hold for the first relax_steps steps.
  Divergence, objective.direction = "jsd" with jsd_beta = b (GKD's generalized JSD, TRL's
    convention), exact over the vocabulary through the policy head (full) or on the top-k buckets:
        JSD_b(s) = b KL(q || m) + (1 - b) KL(p || m),  m = (1 - b) p + b q
    with gradient (1 - b) p_j (log p_j/m_j - KL(p || m)) per logit (the head's backward).

Safeguards, as verl has them: the log-ratio log p - log p_old is clamped to [-20, 20] before the
exponential (a ratio of e^100 times a zero advantage is NaN otherwise), and objective.clip_ratio_c
= c > 1 is the dual clip on negative advantages, surrogate = max(min(rho A, clip(rho) A), c A)
(verl's clip_ratio_c; 0 is off). Every input is masked before the arithmetic, so a padded or
excluded token (a -inf teacher log-prob there, say) reaches neither the value nor the gradient.

The code composes as verl's core_algos does: `clipped_surrogate` (the policy loss per token),
`teacher_term` (the estimate, then each family variant as one small function), `aggregate`
(the loss over tokens); `dgrpo_loss` is those three.
"""


from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.batch import MicroBatch, TeacherSignal
from trainer.config import ObjectiveConfig
from trainer.kernels import HeadOutput

LOG_RATIO_CLAMP = 20.0  # verl's bound on log p - log p_old before the exponential


# -- advantages -------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, valid: torch.Tensor | None = None, *, scale_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g r) [/ (std_g r + eps)] over each group's valid members; rewards is
    [groups, G]. A group with zero reward variance (or fewer than two valid members) gets A = 0:
    it carries no outcome signal. Invalid members (a failed reward) get A = 0. A is continuous in the
    rewards: as the spread goes to 0 so does A (no cut-off at std = eps, where A would jump from 0
    to about +-0.5)."""
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    r = torch.where(valid, rewards, 0.0).double()
    count = valid.sum(-1, keepdim=True)
    mean = r.sum(-1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(valid, r - mean, 0.0)
    # Unbiased std over the group, as GRPO (and TRL, verl) compute it.
    std = (centered.pow(2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    advantages = centered / (std + eps) if scale_std else centered
    return torch.where(valid & (count >= 2), advantages, 0.0).to(rewards.dtype)


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


# -- what the objective sees ------------------------------------------------------------------------
@dataclass
class TokenBatch:
    """The objective's per-token view of a micro-batch: [S, L] over completion tokens (S sequences),
    advantages [S]. The teacher inputs are what the configured term needs: `kl` the exact per-token
    divergence from the policy head (full / topk), `teacher_logprobs` the teacher's log-prob of each
    sampled token, `reference_logprobs` G-OPD's reference model's, `entropy` the student's."""

    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    teacher_logprobs: torch.Tensor | None = None
    reference_logprobs: torch.Tensor | None = None


def token_batch(head: HeadOutput, signal: TeacherSignal, mb: MicroBatch,
                old_logprobs: torch.Tensor | None) -> TokenBatch:
    """A micro-batch's TokenBatch from the policy head's per-target outputs and the teacher signal;
    `old_logprobs` None means pi_old = pi_theta (one epoch, recomputed: rho = 1)."""
    mask = mb.mask & signal.valid[:, None]
    logprobs = mb.tokens(head.logprobs)
    teacher_logprobs = signal.logprobs  # sampled; a local teacher's come from the head (vOPD)
    if head.teacher_logprobs is not None:
        teacher_logprobs = mb.tokens(head.teacher_logprobs)
    return TokenBatch(
        logprobs, logprobs.detach() if old_logprobs is None else old_logprobs, mb.advantages, mask,
        entropy=None if head.entropy is None else mb.tokens(head.entropy.detach()),
        kl=None if head.kl is None else mb.tokens(head.kl), teacher_logprobs=teacher_logprobs,
        reference_logprobs=signal.reference_logprobs)


@dataclass(frozen=True)
class Schedule:
    """Where a step is in the family's schedules: TOPD/POPD's horizon in completion tokens (None:
    the whole rollout) and REOPOLD's phase (`relaxed`: exploration)."""

    horizon: int | None = None
    relaxed: bool = True


def horizon_tokens(cfg: ObjectiveConfig, step: int, max_new_tokens: int) -> int | None:
    """h(step) in tokens for TOPD/POPD (None: the whole rollout). `step` counts from 1."""
    return cfg.horizon_at(step, max_new_tokens)


def schedule(cfg: ObjectiveConfig, step: int, max_new_tokens: int) -> Schedule:
    """The step's Schedule (`step` counts from 1)."""
    return Schedule(horizon_tokens(cfg, step, max_new_tokens), not cfg.relax_steps or step <= cfg.relax_steps)


def signal_kind(cfg: ObjectiveConfig) -> str:
    """What the teacher term needs from the teacher: 'hidden' (the local teacher's last hidden states
    and head: exact full-vocabulary KL; vOPD reads the teacher's log-prob of each token there too),
    'topk' (its top-k log-probs and tail), 'sampled' (its log-prob of each sampled token: k1/k2/k3),
    or 'none' (beta = 0)."""
    if cfg.beta == 0:
        return "none"
    if cfg.baseline == "exact_kl":
        return "hidden"
    return {"full": "hidden", "topk": "topk"}.get(cfg.estimator, "sampled")


# -- the clipped surrogate --------------------------------------------------------------------------
def clipped_surrogate(cfg: ObjectiveConfig, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                      advantages: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO/PPO's per-token surrogate min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), with
    verl's dual clip max(., c A) on negative advantages when clip_ratio_c = c > 0, and the ratio
    rho = exp(clamp(log p - log p_old, -20, 20)) (1 off the mask); advantages are per token [S, L].
    Returns (surrogate, rho)."""
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high) * advantages)
    if cfg.clip_ratio_c:
        surrogate = torch.where(advantages < 0, torch.maximum(surrogate, cfg.clip_ratio_c * advantages), surrogate)
    return surrogate, ratio


# -- the teacher term -------------------------------------------------------------------------------
def sampled_kl(logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates from the sampled token only (Schulman's k1, k2, k3 with
    log r = log pi_teacher - log pi_theta); each value estimates KL(pi_theta || pi_teacher):
      k1 = -log r            unbiased, can be negative; its gradient is valid only in the advantage
      k2 = (log r)^2 / 2     biased value; as a loss its expected gradient is the reverse-KL gradient
      k3 = (r - 1) - log r   unbiased value, >= 0; as a loss its expected gradient is the FORWARD-KL one
    log r is clamped to +-20 for k3 (as the policy ratio is): e^log r overflows otherwise."""
    log_r = teacher_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.pow(2)
    if estimator == "k3":
        log_r = log_r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.expm1(log_r) - log_r
    raise ValueError(f"sampled-token estimator must be k1, k2 or k3, got {estimator!r}")


def forward_kl_value(logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """A sampled-token estimate of the FORWARD KL(pi_teacher || pi_theta) from the student's own
    tokens: r log r - (r - 1) with r = q/p (E_p[r log r] = KL(q || p), E_p[r - 1] = 0; >= 0): what
    k3 reports when its gradient is the forward KL's."""
    log_r = (teacher_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    r = torch.exp(log_r)
    return r * log_r - torch.expm1(log_r)


def _masked(values: torch.Tensor | None, mask: torch.Tensor, fill: torch.Tensor | float, what: str) -> torch.Tensor:
    """`values` where `mask`, `fill` elsewhere: before any arithmetic, so nothing off the mask (a
    -inf at a padded position, say) reaches a value or a gradient."""
    if values is None:
        raise ValueError(f"this teacher term needs {what}")
    return torch.where(mask, values, fill)


def _teacher_logprobs(t: TokenBatch) -> torch.Tensor:
    """The teacher's log-prob of each sampled token, equal to the student's off the mask (d = 0 there)."""
    return _masked(t.teacher_logprobs, t.mask, t.logprobs.detach(), "teacher_logprobs")


def estimate(cfg: ObjectiveConfig, t: TokenBatch) -> torch.Tensor:
    """The per-token divergence estimate [S, L], 0 off the mask: the head's exact KL (full / topk)
    or a sampled-token estimator (k1 / k2 / k3) of the reverse KL."""
    if cfg.estimator in ("full", "topk"):
        return _masked(t.kl, t.mask, 0.0, f"the per-token kl from the policy head (estimator {cfg.estimator!r})")
    logprobs = torch.where(t.mask, t.logprobs, t.logprobs.detach())
    return torch.where(t.mask, sampled_kl(logprobs, _teacher_logprobs(t), cfg.estimator), 0.0)


def gopd_term(cfg: ObjectiveConfig, t: TokenBatch) -> torch.Tensor:
    """G-OPD / ExOPD: -(lambda (log q - log ref) - (log p - log ref)) = d + (lambda - 1)(log ref - log q)."""
    reference = _masked(t.reference_logprobs, t.mask, 0.0, "reference_logprobs (objective.reward_scale != 1, G-OPD)")
    teacher = _teacher_logprobs(t)
    return torch.where(t.mask, t.logprobs - cfg.reward_scale * teacher + (cfg.reward_scale - 1) * reference, 0.0)


def reopold_term(cfg: ObjectiveConfig, t: TokenBatch) -> torch.Tensor:
    """REOPOLD: -max(log q - log p, log(lambda / (1 - lambda))) (see the module docstring)."""
    reward = _teacher_logprobs(t) - t.logprobs
    floor = math.log(cfg.mixture_clip / (1 - cfg.mixture_clip))
    return torch.where(t.mask, -reward.clamp(min=floor), 0.0)


def vopd_baseline(t: TokenBatch) -> torch.Tensor:
    """vOPD: the exact per-token KL, the sampled log-ratio's expectation under the student (detached)."""
    return _masked(t.kl, t.mask, 0.0, "the exact per-token kl from the policy head (baseline 'exact_kl', vOPD)").detach()


def within_horizon(mask: torch.Tensor, horizon: int | None) -> torch.Tensor:
    """TOPD/POPD: the mask's first `horizon` completion tokens of each sequence (all when None)."""
    if horizon is None:
        return mask.bool()
    position = torch.cumsum(mask.long(), dim=-1) - 1  # index among the completion's tokens
    return mask.bool() & (position < horizon)


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


def tip_selection(cfg: ObjectiveConfig, t: TokenBatch, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """TIP / REOPOLD's token-level dynamic sampling: the selected tokens (bool [S, L]) among
    `allowed` (the mask's tokens by default; within a TOPD/POPD horizon, those inside it)."""
    if t.entropy is None:
        raise ValueError(f"token_select = {cfg.token_select!r} needs the per-token entropy")
    allowed = t.mask.bool() if allowed is None else allowed
    divergence = t.kl if t.kl is not None else (t.logprobs - _teacher_logprobs(t)).abs()
    return select_tokens(cfg, allowed, torch.where(allowed, t.entropy, 0.0), torch.where(allowed, divergence, 0.0))


@dataclass
class TeacherTerm:
    """The teacher term per token [S, L]: `term` is what enters the objective (0 off `active`),
    `kl` the reported divergence estimate, `active` the tokens the term trains."""

    term: torch.Tensor
    kl: torch.Tensor
    active: torch.Tensor


def teacher_term(cfg: ObjectiveConfig, t: TokenBatch, at: Schedule = Schedule()) -> TeacherTerm:
    """The estimate, then each configured variant of the on-policy distillation family in turn."""
    if cfg.beta == 0:
        zeros = torch.zeros_like(t.logprobs)
        return TeacherTerm(zeros, zeros, torch.zeros_like(t.mask, dtype=torch.bool))
    kl = estimate(cfg, t)
    term = kl
    if cfg.reward_scale != 1:
        term = gopd_term(cfg, t)
    elif cfg.mixture_clip < 1 and at.relaxed:  # the config refuses G-OPD with REOPOLD
        term = reopold_term(cfg, t)
    if cfg.baseline == "exact_kl":
        term = term - vopd_baseline(t)
    active = within_horizon(t.mask, at.horizon)
    if cfg.token_select != "none" and at.relaxed:
        # TIP: token_fraction of the tokens the term trains (those within the horizon), as their
        # mean: at fraction 1 the term is unchanged, with or without a horizon
        selected = tip_selection(cfg, t, allowed=active)
        term = term * (active.sum() / selected.sum().clamp(min=1))
        active = selected
    if (cfg.estimator, cfg.direction) == ("k3", "forward"):  # report the divergence its gradient follows
        kl = torch.where(t.mask, forward_kl_value(torch.where(t.mask, t.logprobs, t.logprobs.detach()),
                                                  _teacher_logprobs(t)), 0.0).detach()
    return TeacherTerm(torch.where(active, term, 0.0), kl, active)


# -- aggregation and the loss -----------------------------------------------------------------------
def normalizer(cfg: ObjectiveConfig, mask: torch.Tensor) -> float:
    """The step's denominator for `dgrpo_loss` computed over a whole step's mask [S, T]: sequences
    with at least one trained token (seq-mean, seq-sum-norm) or trained tokens (token-mean)."""
    sequences = float((mask.sum(-1) > 0).sum())
    if cfg.aggregation == "token-mean":
        return float(mask.sum())
    return sequences * (cfg.norm_constant if cfg.aggregation == "seq-sum-norm" else 1.0)


def aggregate(cfg: ObjectiveConfig, per_token: torch.Tensor, mask: torch.Tensor, denominator: float) -> torch.Tensor:
    """The objective J over tokens: each sequence's mean (seq-mean) or every token's sum (token-mean,
    seq-sum-norm), over the step's `denominator`."""
    maskf = mask.to(per_token.dtype)
    if cfg.aggregation == "seq-mean":
        objective = ((per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1)).sum()
    else:  # token-mean and seq-sum-norm both sum every token; they differ in the denominator
        objective = (per_token * maskf).sum()
    return objective / max(denominator, 1e-12)


def dgrpo_loss(t: TokenBatch, cfg: ObjectiveConfig, *, denominator: float | None = None,
               at: Schedule = Schedule()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(-J of these sequences over the step's `denominator`, per-token sums for metrics): the
    clipped surrogate, the teacher term (combine = loss: minus beta x term; combine = advantage:
    folded into a per-token advantage A_i - beta x term, detached), one aggregation. `denominator`
    defaults to `normalizer(cfg, mask)` (a step of one micro-batch)."""
    mask = t.mask.bool()
    teacher = teacher_term(cfg, t, at)
    advantages = t.advantages[:, None].to(t.logprobs.dtype).expand_as(t.logprobs)
    if cfg.combine == "advantage":
        advantages = advantages - cfg.beta * teacher.term.detach()
    surrogate, ratio = clipped_surrogate(cfg, t.logprobs, t.old_logprobs, advantages, mask)
    per_token = surrogate - cfg.beta * teacher.term if cfg.combine == "loss" else surrogate
    loss = -aggregate(cfg, per_token, mask, normalizer(cfg, mask) if denominator is None else denominator)

    with torch.no_grad():
        maskf = mask.to(t.logprobs.dtype)
        clipped_low = (ratio < 1 - cfg.eps_low) & (advantages < 0)
        clipped_high = (ratio > 1 + cfg.eps_high) & (advantages > 0)
        stats = {
            "tokens": maskf.sum(),
            "kl_sum": (teacher.kl * maskf).sum(),
            "clip_low_sum": (clipped_low & mask).sum().to(t.logprobs.dtype),
            "clip_high_sum": (clipped_high & mask).sum().to(t.logprobs.dtype),
            "ratio_sum": (ratio * maskf).sum(),
            "distill_tokens": teacher.active.sum().to(t.logprobs.dtype),
            "entropy_sum": (t.entropy * maskf).sum() if t.entropy is not None else maskf.new_zeros(()),
        }
    return loss, stats


def step_loss(cfg: ObjectiveConfig, head: HeadOutput, signal: TeacherSignal, mb: MicroBatch,
              old_logprobs: torch.Tensor | None, denominator: float,
              at: Schedule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The RL step's loss on one micro-batch: `dgrpo_loss` on the `token_batch` of the policy head's
    outputs and the teacher signal."""
    return dgrpo_loss(token_batch(head, signal, mb, old_logprobs), cfg, denominator=denominator, at=at)
