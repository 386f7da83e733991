"""numba kernels for the exact branch and bound and the Kawasaki annealer (compiled on first use, cached).

Kept apart so that importing the solvers does not import numba; `kernels()` compiles and returns them.
"""

from __future__ import annotations

import time

import numba
import numpy as np

# Module-level functions, not closures: numba's on-disk cache keys a closure on its cells (other dispatchers, new
# in every process), so closures recompiled in each process and left a new cache file each time.
njit = numba.njit(cache=True)


@njit
def now():
    with numba.objmode(value="float64"):
        value = time.perf_counter()
    return value


@njit
def sum_smallest(values, r):
    return np.sort(values)[:r].sum()


@njit
def can_complete(weights, lower, upper, tol, wsum, t, r):
    # Can some r of the free variables t.. still bring every constraint into [lower, upper]?
    for c in range(weights.shape[0]):
        tail = np.sort(weights[c, t:])
        low = wsum[c] + tail[:r].sum()
        high = wsum[c] + tail[tail.shape[0] - r :].sum()
        if high < lower[c] - tol[c] or low > upper[c] + tol[c]:
            return False
    return True


@njit
def satisfied(lower, upper, tol, values):
    for c in range(values.shape[0]):
        if values[c] < lower[c] - tol[c] or values[c] > upper[c] + tol[c]:
            return False
    return True


@njit
def keep_best(best_e, best_x, count, energy, x):
    """Insert a leaf into the k best (arrays of capacity k); return the new count. The first of equal
    energies stays."""
    if count < best_e.shape[0]:
        best_e[count] = energy
        best_x[count] = x
        return count + 1
    worst = np.argmax(best_e)
    if energy < best_e[worst]:
        best_e[worst] = energy
        best_x[worst] = x
    return count


@njit
def frank_wolfe(q, d, t, r, energy, g, threshold, iterations, start):
    """Lower bound on min E + (2g + d).y + y.(Q_FF - diag d).y over 0 <= y <= 1, sum y = r (F = t..n-1).
    Every iterate gives a valid bound f(y) + min_s grad.(s - y); returns the best one and the last y.
    `start` is a feasible warm start (the parent's relaxed solution), or empty for the best linear vertex."""
    lin = 2.0 * g[t:] + d[t:]
    qff = np.ascontiguousarray(q[t:, t:])
    dd = d[t:]
    m = lin.shape[0]
    if start.shape[0] == m:
        y = start.copy()
    else:
        y = np.zeros(m)
        for j in np.argsort(lin)[:r]:
            y[j] = 1.0
    ay = qff @ y - dd * y
    best = -np.inf
    for _ in range(iterations):
        f = energy + lin @ y + y @ ay
        grad = lin + 2.0 * ay
        pick = np.argsort(grad)[:r]
        s = np.zeros(m)
        for j in pick:
            s[j] = 1.0
        gs = grad @ s
        gy = grad @ y
        bound = f + gs - gy
        if bound > best:
            best = bound
        if best > threshold or gs - gy >= -1e-13 * max(1.0, abs(f)):
            break
        a_s = qff @ s - dd * s
        curvature = s @ a_s - 2.0 * (s @ ay) + y @ ay
        step = 1.0 if curvature <= 0.0 else min(1.0, -(gs - gy) / (2.0 * curvature))
        y = y + step * (s - y)
        ay = ay + step * (a_s - ay)
    return best, y


@njit
def branch_and_bound(
    q, r_total, k, d_tail, weights, lower, upper, ctol, init_threshold, fw_iterations, time_limit
):
    """Top-k of min x.Q.x, sum x = r_total (+ linear constraints) by depth-first branch and bound over the
    variables in the given order. Returns (energies, states, count, nodes, timed_out, lower_bound)."""
    n = q.shape[0]
    has_constraints = weights.shape[0] > 0
    x = np.zeros(n, np.uint8)
    g = np.zeros(n)
    wsum = np.zeros(weights.shape[0])
    best_e = np.full(k, np.inf)
    best_x = np.zeros((k, n), np.uint8)
    count = 0
    depth = n + 2
    st_t = np.zeros(depth, np.int64)
    st_c = np.zeros(depth, np.int64)
    st_e = np.zeros(depth)
    st_stage = np.zeros(depth, np.int64)
    st_first = np.zeros(depth, np.int64)
    st_included = np.zeros(depth, np.int64)
    st_lb = np.full(depth, -np.inf)
    st_y = np.zeros((depth, n))  # relaxed solution of each frame, on its free suffix
    st_warm = np.zeros(depth, np.int64)  # 1 if st_y holds a warm start for this (not yet evaluated) frame
    empty = np.zeros(0)
    sp = 1
    nodes = 0
    timed_out = False
    start = now()
    scale = max(1.0, np.abs(q).max())
    while sp > 0:
        top = sp - 1
        t = st_t[top]
        c = st_c[top]
        e = st_e[top]
        r = r_total - c
        m = n - t
        threshold = init_threshold if count < k else best_e.max()
        tol = 1e-12 * max(scale, abs(threshold) if np.isfinite(threshold) else 0.0)
        if st_stage[top] == 0:
            nodes += 1
            if (nodes & 255) == 0 and now() - start > time_limit:
                timed_out = True
                break
            done = False
            if has_constraints and not can_complete(weights, lower, upper, ctol, wsum, t, r):
                done = True
            elif r == 0 or r == m:
                leaf_e = e
                values = wsum.copy()
                if r == m:
                    extra = 0.0
                    for j in range(t, n):
                        inner = g[j]
                        for i in range(t, j):
                            inner += q[i, j]
                        extra += 2.0 * inner + q[j, j]
                        values += weights[:, j]
                    leaf_e = e + extra
                if leaf_e <= threshold + tol and (
                    not has_constraints or satisfied(lower, upper, ctol, values)
                ):
                    for j in range(t, n):
                        x[j] = 1 if r == m else 0
                    count = keep_best(best_e, best_x, count, leaf_e, x)
                    for j in range(t, n):
                        x[j] = 0
                done = True
            elif r == 1:
                for j in range(t, n):
                    leaf_e = e + 2.0 * g[j] + q[j, j]
                    threshold = init_threshold if count < k else best_e.max()
                    if leaf_e > threshold + tol:
                        continue
                    if has_constraints and not satisfied(lower, upper, ctol, wsum + weights[:, j]):
                        continue
                    x[j] = 1
                    count = keep_best(best_e, best_x, count, leaf_e, x)
                    x[j] = 0
                done = True
            else:
                bound = e + sum_smallest(2.0 * g[t:] + d_tail[t, t:], r)
                if bound > threshold + tol:
                    done = True
                else:
                    start_y = st_y[top, t:].copy() if st_warm[top] == 1 else empty
                    fw_bound, y = frank_wolfe(
                        q, d_tail[t], t, r, e, g, threshold + tol, fw_iterations, start_y
                    )
                    bound = max(bound, fw_bound)
                    if bound > threshold + tol:
                        done = True
                    else:
                        st_lb[top] = bound
                        st_y[top, t:] = y
                        st_first[top] = 1 if y[0] >= 0.5 else 0
            if done:
                sp -= 1
                continue
            st_stage[top] = 1
            include = st_first[top] == 1
        elif st_stage[top] == 1:
            if st_included[top] == 1:  # undo the first child's include
                x[t] = 0
                for j in range(t + 1, n):
                    g[j] -= q[t, j]
                wsum -= weights[:, t]
                st_included[top] = 0
            st_stage[top] = 2
            if st_lb[top] > threshold + tol:  # the threshold tightened while the first child ran
                sp -= 1
                continue
            include = st_first[top] == 0
        else:
            if st_included[top] == 1:
                x[t] = 0
                for j in range(t + 1, n):
                    g[j] -= q[t, j]
                wsum -= weights[:, t]
                st_included[top] = 0
            sp -= 1
            continue
        # push the chosen child of frame `top`
        if include:
            child_e = e + 2.0 * g[t] + q[t, t]
            x[t] = 1
            for j in range(t + 1, n):
                g[j] += q[t, j]
            wsum += weights[:, t]
            st_included[top] = 1
            child_c = c + 1
        else:
            if m - 1 < r:  # not enough variables left to exclude t
                continue
            child_e = e
            child_c = c
        st_t[sp] = t + 1
        st_c[sp] = child_c
        st_e[sp] = child_e
        st_stage[sp] = 0
        st_included[sp] = 0
        st_lb[sp] = st_lb[top]
        # Warm start: the parent's relaxed solution on the child's suffix, moved back onto {sum y = r_child}.
        child_r = r_total - child_c
        parent_y = st_y[top, t]
        tail = st_y[top, t + 1 :]
        st_warm[sp] = 0
        if m > 1 and 0 < child_r < m - 1:
            if include:  # sum(tail) = r - y_t >= r - 1 = child_r: scale down
                total = tail.sum()
                if total > 0:
                    st_y[sp, t + 1 :] = tail * (child_r / total)
                    st_warm[sp] = 1
            else:  # sum(tail) = r - y_t: spread y_t over the room left below 1
                room = 1.0 - tail
                room_total = room.sum()
                if room_total > parent_y:
                    st_y[sp, t + 1 :] = tail + parent_y * room / room_total
                    st_warm[sp] = 1
        sp += 1
    lower_bound = np.inf
    if timed_out:
        for f in range(sp):
            if st_lb[f] < lower_bound:
                lower_bound = st_lb[f]
    if count > 0 and best_e[:count].min() < lower_bound:
        lower_bound = best_e[:count].min()
    return best_e, best_x, count, nodes, timed_out, lower_bound


@njit
def kawasaki(q, r, restarts, sweeps, seed, weights, lower, upper, cscale, penalty):
    """Fixed-cardinality simulated annealing with swap moves (Kawasaki dynamics); linear constraints enter as
    a penalty on their violation. Each restart ends with steepest descent over all swaps. Returns the final
    state of every restart."""
    np.random.seed(seed)
    n = q.shape[0]
    ncons = weights.shape[0]
    finals = np.zeros((restarts, n), np.uint8)

    def violation(values):  # in units of the constraint's largest weight (about one block)
        total = 0.0
        for c in range(ncons):
            if values[c] < lower[c]:
                total += (lower[c] - values[c]) / cscale[c]
            elif values[c] > upper[c]:
                total += (values[c] - upper[c]) / cscale[c]
        return total

    samples = np.empty(64)
    for restart in range(restarts):
        perm = np.random.permutation(n)
        ones = perm[:r].copy()
        zeros = perm[r:].copy()
        x = np.zeros(n)
        for i in ones:
            x[i] = 1.0
        g = q @ x
        values = weights @ x
        viol = violation(values)
        # starting temperature: median |dE| of random swaps from this random state
        for s in range(64):
            i = ones[np.random.randint(r)]
            j = zeros[np.random.randint(n - r)]
            samples[s] = abs(2.0 * (g[j] - g[i]) + q[i, i] + q[j, j] - 2.0 * q[i, j]) + 1e-300
        t0 = np.median(samples)
        total_moves = sweeps * n
        for move in range(total_moves):
            temperature = t0 * (1e-4 ** (move / max(1, total_moves - 1)))
            a = np.random.randint(r)
            b = np.random.randint(n - r)
            i = ones[a]
            j = zeros[b]
            delta = 2.0 * (g[j] - g[i]) + q[i, i] + q[j, j] - 2.0 * q[i, j]
            new_values = values
            new_viol = viol
            if ncons > 0:
                new_values = values - weights[:, i] + weights[:, j]
                new_viol = violation(new_values)
                delta += penalty * (new_viol - viol)
            if delta <= 0.0 or np.random.random() < np.exp(-delta / temperature):
                g += q[:, j] - q[:, i]
                ones[a] = j
                zeros[b] = i
                values = new_values
                viol = new_viol
        improved = True
        while improved:  # steepest descent over all swaps
            improved = False
            best_delta = 0.0
            best_a = -1
            best_b = -1
            for a in range(r):
                i = ones[a]
                for b in range(n - r):
                    j = zeros[b]
                    delta = 2.0 * (g[j] - g[i]) + q[i, i] + q[j, j] - 2.0 * q[i, j]
                    if ncons > 0:
                        delta += penalty * (violation(values - weights[:, i] + weights[:, j]) - viol)
                    if delta < best_delta - 1e-13 * max(1.0, abs(best_delta)):
                        best_delta = delta
                        best_a = a
                        best_b = b
            if best_a >= 0:
                i = ones[best_a]
                j = zeros[best_b]
                g += q[:, j] - q[:, i]
                ones[best_a] = j
                zeros[best_b] = i
                if ncons > 0:
                    values = values - weights[:, i] + weights[:, j]
                    viol = violation(values)
                improved = True
        for i in ones:
            finals[restart, i] = 1
    return finals


@njit
def enumerate_top_k(q, r, k, weights, lower, upper, ctol):
    """Every combination in lexicographic order, depth first: prefix energy and g = Q x_prefix are updated
    per internal node, each leaf costs O(1) (plus the constraint check). Keeps the k lowest (first found wins
    an exact tie, so ties keep lexicographic order). Returns (energies, index rows, count, states visited)."""
    n = q.shape[0]
    ncons = weights.shape[0]
    best_e = np.full(k, np.inf)
    best_idx = np.zeros((k, r), np.int64)
    count = 0
    worst = 0
    idx = np.zeros(r, np.int64)
    prefix_e = np.zeros(r + 1)
    g = np.zeros((r + 1, n))
    wprefix = np.zeros((r + 1, ncons))
    visited = 0
    d = 0
    idx[0] = -1
    while d >= 0:
        idx[d] += 1
        if idx[d] > n - (r - d):
            d -= 1
            continue
        i = idx[d]
        if d < r - 1:
            prefix_e[d + 1] = prefix_e[d] + 2.0 * g[d, i] + q[i, i]
            for j in range(i + 1, n):
                g[d + 1, j] = g[d, j] + q[i, j]
            for c in range(ncons):
                wprefix[d + 1, c] = wprefix[d, c] + weights[c, i]
            idx[d + 1] = i
            d += 1
            continue
        for j in range(i, n):  # the last index runs over the rest of the row: O(1) per state
            visited += 1
            e = prefix_e[d] + 2.0 * g[d, j] + q[j, j]
            if count == k and e >= best_e[worst]:
                continue
            feasible = True
            for c in range(ncons):
                value = wprefix[d, c] + weights[c, j]
                if value < lower[c] - ctol[c] or value > upper[c] + ctol[c]:
                    feasible = False
                    break
            if not feasible:
                continue
            slot = count if count < k else worst
            best_e[slot] = e
            best_idx[slot, :d] = idx[:d]
            best_idx[slot, d] = j
            if count < k:
                count += 1
            if count == k:
                worst = np.argmax(best_e)
        idx[d] = n  # the row is done
        d -= 1
    return best_e, best_idx, count, visited


def kernels():
    """The compiled kernels (from the on-disk cache after the first process on this machine)."""
    return branch_and_bound, kawasaki, enumerate_top_k
