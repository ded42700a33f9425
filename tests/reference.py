"""Slow but obvious reference implementations of the core contract (plain Python loops).

The vectorised code in ``echovl`` is checked against these on thousands of random cases.
"""

from __future__ import annotations

import math


def step_index_ref(ids: list[list[int]], mask: list[list[int]], is_delim: list[bool]) -> list[list[int]]:
    """Walk the valid tokens of each row; a step closes after a delimiter not followed by another one."""
    out = []
    for row_ids, row_mask in zip(ids, mask):
        steps = [-1] * len(row_ids)
        valid = [t for t, m in enumerate(row_mask) if m]
        step = 0
        for k, t in enumerate(valid):
            steps[t] = step
            token = row_ids[t]
            delim = 0 <= token < len(is_delim) and is_delim[token]
            if delim:
                nxt = valid[k + 1] if k + 1 < len(valid) else None
                next_delim = nxt is not None and 0 <= row_ids[nxt] < len(is_delim) and is_delim[row_ids[nxt]]
                if not next_delim:
                    step += 1
        out.append(steps)
    return out


def mine_ref(entropy, steps, text_mask, verified, group, min_step_tokens=1, scope="all"):
    """Returns ({group: (row, step, mean_entropy, length)}, mask as nested lists)."""
    batch = len(entropy)
    values: dict[tuple[int, int], list[float]] = {}
    for b in range(batch):
        for t in range(len(entropy[b])):
            if steps[b][t] >= 0 and text_mask[b][t]:
                values.setdefault((b, steps[b][t]), []).append(entropy[b][t])
    clips = {}
    for g in sorted(set(group)):
        rows = [b for b in range(batch) if group[b] == g]
        if scope == "degenerate" and not all(verified[b] for b in rows):
            continue
        best = None
        for b in rows:
            if not verified[b]:
                continue
            for s in sorted(s for (r, s) in values if r == b):
                vals = values[(b, s)]
                if len(vals) < min_step_tokens:
                    continue
                mean = math.fsum(vals) / len(vals)
                if best is None or mean > best[0]:
                    best = (mean, b, s)
        if best is not None:
            clips[g] = best
    mask = [[False] * len(entropy[b]) for b in range(batch)]
    result = {}
    for g, (mean, b, s) in clips.items():
        for t in range(len(entropy[b])):
            mask[b][t] = bool(text_mask[b][t]) and 0 <= steps[b][t] <= s
        result[g] = (b, s, mean, sum(mask[b]))
    return result, mask


def echo_nll_ref(log_probs, mask):
    total, count = 0.0, 0
    for row_lp, row_mask in zip(log_probs, mask):
        picked = [-lp for lp, m in zip(row_lp, row_mask) if m]
        if picked:
            total += sum(picked) / len(picked)
            count += 1
    return total, count


def entropy_ref(row: list[float]) -> float:
    """Closed form in float64: H = logsumexp(z) - sum softmax(z) z."""
    top = max(row)
    lse = top + math.log(math.fsum(math.exp(z - top) for z in row))
    return lse - math.fsum(math.exp(z - lse) * z for z in row)


def mine_several_ref(
    entropy, steps, text_mask, verified, group, min_step_tokens=1, scope="all", selection="top_k", top_k=1, temp=1.0
):
    """``top_k`` / ``soft`` selection with plain loops. Returns a list of clips (group, row, step, mean, length,
    weight) in the documented order, and the per-token weights as nested lists."""
    batch = len(entropy)
    values: dict[tuple[int, int], list[float]] = {}
    for b in range(batch):
        for t in range(len(entropy[b])):
            if steps[b][t] >= 0 and text_mask[b][t]:
                values.setdefault((b, steps[b][t]), []).append(entropy[b][t])
    clips = []
    for g in sorted(set(group)):
        rows = [b for b in range(batch) if group[b] == g]
        if scope == "degenerate" and not all(verified[b] for b in rows):
            continue
        candidates = []
        for b in rows:
            if not verified[b]:
                continue
            for s in sorted(s for (r, s) in values if r == b):
                vals = values[(b, s)]
                if len(vals) >= min_step_tokens:
                    candidates.append((math.fsum(vals) / len(vals), b, s))
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        if selection == "top_k":
            chosen = [(c, 1.0) for c in candidates[:top_k]]
        else:
            top = max((c[0] for c in candidates), default=0.0)
            exps = [math.exp((c[0] - top) / temp) for c in candidates]
            chosen = [(c, e / math.fsum(exps)) for c, e in zip(candidates, exps)]
        for (mean, b, s), weight in chosen:
            length = sum(1 for t in range(len(entropy[b])) if text_mask[b][t] and 0 <= steps[b][t] <= s)
            clips.append((g, b, s, mean, length, weight))
    token_weight = [[0.0] * len(entropy[b]) for b in range(batch)]
    for _, b, s, _, length, weight in clips:
        for t in range(len(entropy[b])):
            if text_mask[b][t] and 0 <= steps[b][t] <= s:
                token_weight[b][t] += weight / length
    return clips, token_weight
