"""The distillation loss: token-level KL(teacher || student) over the vocabulary, as a pure function.

    L = alpha * T^2 * sum_t KL(softmax(z_t / T) || softmax(s_t / T)) / n  +  (1 - alpha) * CE(s)

over the real (attention-mask) positions t, n of them (arXiv:2602.00161 retrains with T = 1, alpha = 1:
forward KL only). The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _check_shapes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape. The teacher must share the student's vocabulary (same tokenizer, same `vocab_size`) and see the "
            "same batch."
        )


def token_kl_sum(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over real positions of KL(softmax(teacher / T) || softmax(student / T)), and the number of positions.

    Padding positions are dropped before the softmax, so their logits cost nothing and cannot leak into the
    loss. Log-probabilities are computed in float32 whatever the logits' dtype (bf16 log-softmax over a large
    vocabulary loses the small KL values to rounding).
    """
    import torch.nn.functional as F

    _check_shapes(student_logits, teacher_logits)
    if attention_mask is not None:
        real = attention_mask.to(device=student_logits.device).bool()
        student = student_logits[real]
        teacher = teacher_logits.to(student_logits.device)[real]
    else:
        student = student_logits.reshape(-1, student_logits.shape[-1])
        teacher = teacher_logits.to(student_logits.device).reshape(-1, teacher_logits.shape[-1])
    student_log_probs = F.log_softmax(student.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum")
    return kl, student_log_probs.new_tensor(float(student.shape[0]))


def next_token_ce_sum(
    student_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy (position t predicts labels[t + 1]; -100 ignored) and the target count."""
    import torch.nn.functional as F

    from ..estimation.forward import next_token_targets

    targets = next_token_targets(labels).to(student_logits.device)
    real = targets != -100
    ce = F.cross_entropy(student_logits[real].float(), targets[real], reduction="sum")
    return ce, ce.new_tensor(float(real.sum()))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 1.0,
    num_kl_tokens: torch.Tensor | float | None = None,
    num_ce_tokens: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """alpha * T^2 * mean-over-real-tokens KL(teacher || student) + (1 - alpha) * next-token cross-entropy.

    Args:
        student_logits: `[batch, seq, vocab]` logits of the pruned model.
        teacher_logits: the unpruned model's logits on the same tokens.
        attention_mask: `[batch, seq]`, 1 on real tokens; `None` counts every position.
        labels: next-token labels (-100 ignored); needed when `alpha < 1`.
        temperature: T > 0; both distributions are softened by it and the KL is multiplied by T^2.
        alpha: weight of the KL term in [0, 1]; `1 - alpha` weights the cross-entropy.
        num_kl_tokens: divide the KL sum by this token count instead of this batch's own, e.g. the count of a
            whole accumulated (and gathered) batch, so micro-batches add up to its exact mean.
        num_ce_tokens: the same for the cross-entropy sum.

    Returns:
        A float32 scalar.
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    loss = None
    if alpha > 0:
        kl, count = token_kl_sum(student_logits, teacher_logits, attention_mask, temperature=temperature)
        denominator = count.clamp_min(1.0) if num_kl_tokens is None else num_kl_tokens
        loss = alpha * temperature**2 * kl / denominator
    if alpha < 1:
        if labels is None:
            raise ValueError(f"`alpha`={alpha} mixes in the cross-entropy, which needs `labels`.")
        ce, count = next_token_ce_sum(student_logits, labels)
        denominator = count.clamp_min(1.0) if num_ce_tokens is None else num_ce_tokens
        ce_term = (1.0 - alpha) * ce / denominator
        loss = ce_term if loss is None else loss + ce_term
    return loss
