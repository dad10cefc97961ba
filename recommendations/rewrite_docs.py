"""Documentation of the candidate rewrite generators, printed with the rules whose findings they fix
(`npu-advise rules NPA501`): what each rewrites, when it refuses, what it proves from the syntax and what only
the verification stage (the candidate run beside the original on the user's own run) proves. Kept apart from
the codemods (which need libcst) so that listing rules never imports the parser."""
from __future__ import annotations

from npu_advise.rules import RewriteDoc, document_rewrite

_LOOP, _SYNC = ("NPA501",), ("NPA301", "NPA302")

DOCS = (
    RewriteDoc(
        "affine_interpolation", _LOOP,
        rewrites="`for i in range(a, b): r = i / n; res[i + c] = (1 - r) * A + r * B` -> one `torch.arange` of ratios "
                 "and one slice assignment.",
        refuses="other body shapes, `i`/`r` read after the loop, A/B depending on the loop.",
        static="the body shape; A and B loop-invariant; `res` visibly 2-D (else advice only).",
        verification="nothing beyond the static checks (the rounding of the ratios, in the result's dtype)."),
    RewriteDoc(
        "prefix_mask", _LOOP + _SYNC,
        rewrites="`for i, n in enumerate(lens): mask[i][:n] = v` -> one `masked_fill_` against `torch.arange`.",
        refuses="any other statement in the body, `mask` not visibly 2-D (advice only).",
        static="the whole semantics, negative lengths included.",
        verification="nothing beyond the static checks."),
    RewriteDoc(
        "item_loop", _LOOP + _SYNC,
        rewrites="`for x in T: ... x.item() ...` and `for i in range(len(T)): ... T[i].item() ...` -> iterate "
                 "`T.reshape(-1).tolist()`.",
        refuses="other uses of `x` / `T` in the body, `T` assigned in the body.",
        static="the body shape; `T` a tensor (else advice only).",
        verification="nothing beyond the static checks."),
    RewriteDoc(
        "scalar_reads", _LOOP + _SYNC,
        rewrites="per-iteration reads of device values as Python numbers -- `int(x)`, `float(x)`, `x.item()`, "
                 "`range(x)`, slice bounds and indices, of loop variables iterating a tensor (`for ll in lens`, "
                 "enumerate, zip, comprehensions) or of `T[i]` with `i` the loop index -> one `.tolist()` of the "
                 "tensor before the loop.",
        refuses="a loop variable also used as a tensor (`x * ll`), `T` assigned or changed in place in the loop, "
                "the variable read after the loop, a `T` that is already a host list.",
        static="every use is a scalar read of an unchanged tensor; `T` a tensor when its creation is visible.",
        verification="`T` is a tensor when its creation is not visible; arithmetic and comparisons before the value "
                     "becomes a Python number (`if score > 0.3`) give the same result in double precision."),
    RewriteDoc(
        "host_transfers", _LOOP + _SYNC,
        rewrites="one device->host copy per iteration (`x.cpu()`, `x.detach().cpu().numpy()`, `T[i].cpu()`) -> "
                 "one copy of the whole tensor before the loop, indexed inside.",
        refuses="a loop variable used other than through that one transfer chain, `T` changed in the loop.",
        static="each per-iteration copy is the same chain on one element of an unchanged tensor.",
        verification="when `T` may be a list of tensors the candidate stacks it first: equal shapes."),
    RewriteDoc(
        "segment_reduce", _LOOP + _SYNC,
        rewrites="`for g in range(G)` / `for g in labels.unique()` with `out[g] = x[labels == g].sum(0)` (mean, "
                 "amax/amin via max(0).values) or `(labels == g).sum()` -> `index_add_` / `scatter_reduce_` / "
                 "`bincount` over all rows at once (labels outside the groups go to a dropped bin). The mask may be "
                 "bound to a name first (`sel = labels == g`) and the write guarded by an emptiness test (`if "
                 "sel.any():`, `if sel.sum() == 0: continue`, `len(x[sel]) > 0`): then only groups with a row are "
                 "written, through one `torch.where`. For max/min a second candidate gathers the first row holding "
                 "each group's extreme, so gradients go where `.max(0)` sends them when rows tie.",
        refuses="any other statement in the body, a guard that tests anything but emptiness, a reduction over "
                "another dim, `g` or a mask name read after the loop.",
        static="the body is exactly one per-group reduction written to `out[g]`, behind at most one emptiness guard.",
        verification="`labels` is 1-D with one entry per row of `x`; sums in another order within tolerance; "
                     "an empty group's max/min (the loop raises) becomes 0; with tied maxima scatter_reduce shares the "
                     "gradient among the tied rows (the first candidate is then rejected and the gathering one tried)."),
    RewriteDoc(
        "map_broadcast", _LOOP,
        rewrites="a loop (or comprehension) computing one result per element with elementwise ops only -- "
                 "`out[i] = f(A[i], B[i], c)`, append-then-`torch.stack`/`torch.cat` -- -> the same expression "
                 "once on the whole tensors (`A[i]` -> `A[:n]`).",
        refuses="non-elementwise calls, indexing or `.shape` of per-element values, the index used as a number, "
                "loop-carried values, writes to anything that outlives an iteration, break/return, names read "
                "after the loop.",
        static="the body binds only iteration-local names and results are kept in iteration order.",
        verification="loop-invariant operands broadcast against the new leading dimension as they did against one "
                     "element; the per-element operands have one row per iteration."),
    RewriteDoc(
        "map_vmap", _LOOP,
        rewrites="the same loops with any body -> the body as a local function mapped with `torch.vmap` over the "
                 "per-element operands (`in_dims` 0; the loop index, when used as a number, as a `torch.arange` "
                 "on the operands' device); `out_dims` / a flatten reproduce stack/cat along a dim. One "
                 "`if COND: continue` in a collecting loop is kept as a flag per iteration: every iteration is "
                 "computed and the skipped ones dropped by one boolean selection.",
        refuses="as map_broadcast except the elementwise condition; the index used as a Python int (range(i), "
                "slice bounds); random ops; more than one `continue`, or one with sums or row writes.",
        static="as map_broadcast.",
        verification="the body runs under vmap (no data-dependent Python control flow, .item(), in-place writes into "
                     "loop-invariant tensors); equal leading sizes; a skipped iteration computes without raising "
                     "and leaves the kept results and gradients as they were."),
    RewriteDoc(
        "level_batch", _LOOP,
        rewrites="fixed small loops over levels / cameras of the same op on Python lists of tensors (`for f, g in "
                 "zip(feats, grids): out.append(F.grid_sample(f, g))`) -> the lists stacked once and the op mapped "
                 "with `torch.vmap` in one batched call.",
        refuses="as map_vmap.",
        static="as map_vmap.",
        verification="the tensors of each list have equal shapes -- where they do not (feature levels of different "
                     "sizes) torch.stack raises, the candidate is rejected with that reason and the loop stays."),
    RewriteDoc(
        "foreach_update", _LOOP,
        rewrites="a loop updating a list of tensors in place one at a time (EMA of weights, hand-written SGD, "
                 "rescaling) -- `v *= s`, `v += a * X`, `v.add_(X, alpha=a)`, `v.sub_`, `v.copy_`, `v.lerp_`, "
                 "`v.zero_()`, optionally behind an `if` on the tensor's metadata -> one `torch._foreach_*` call "
                 "per update over the (filtered) list.",
        refuses="any other statement, a filter that reads tensor values, scalars that depend on the loop.",
        static="the body only updates the loop's tensor in place; the scalars are loop-invariant.",
        verification="no tensor appears twice in the list (tied weights); the scalars are numbers or one-element "
                     "tensors; rounding of the fused alpha within tolerance."),
    RewriteDoc(
        "device_checks", _SYNC,
        rewrites="`assert <tensor>.all()[, \"literal\"]` in the step -> `torch._assert_async(...)` (no host read); "
                 "`if not torch.isfinite(loss): raise RuntimeError(\"literal\")` (a branch that only raises) -> "
                 "`torch._assert_async(torch.isfinite(loss), \"literal\")`; "
                 "`len(torch.nonzero(m))` / `.shape[0]` / `.size(0)` -> `int(torch.count_nonzero(m))`.",
        refuses="a computed (f-string) message, a condition that is not a whole-tensor `.all()`/`.any()` or a torch "
                "check; a raising branch with anything else in it, an elif/else, or a non-builtin exception.",
        static="passing checks do nothing either way; nonzero's row count is the non-zero count.",
        verification="the receiver is a tensor when its creation is not visible. A failing check raises "
                     "RuntimeError instead of AssertionError, and still runs under `python -O`."),
    RewriteDoc(
        "device_math", _SYNC,
        rewrites="`n = max(pos.sum().item(), 1.0)` (also `min`, `float(T)`, `int(T)`) -> `n = pos.sum().clamp(min=1.0)`, "
                 "a 0-d tensor, when `n` only feeds tensor arithmetic.",
        refuses="any use of `n` that is not an operand of + - * / with a visible tensor (a format, a comparison, a call "
                "argument), `n` rebound, a bound that is not a number literal.",
        static="the same values (the count rounded in the tensor's dtype instead of double).",
        verification="the receiver is a tensor when its creation is not visible; in a training loop, the whole-run "
                     "check (the parameters after every optimizer step equal)."),
    RewriteDoc(
        "index_reads", _LOOP + _SYNC,
        rewrites="`best = ade[b].argmin().item()` (also `int(T)`) whose every use indexes a tensor (`xy[b, best]`) -> "
                 "the read dropped: `best` stays a 0-d integer tensor on the device (`T.reshape(())`, `.long()` for "
                 "`int()`); at a loop line, every such read in the loop.",
        refuses="any other use of the name (arithmetic, a format, a slice bound, a call argument, a return), the name "
                "bound anywhere else in the function, an indexed result that is assigned to, aliased by a name, changed "
                "in place or written through a view.",
        static="a 0-d integer tensor index selects what the Python integer selected (same shape and values; a copy "
               "instead of a view, which nothing changes).",
        verification="`T` is a tensor when its creation is not visible. Not provable on a CPU run (a constraint of the "
                     "fix): the indexed tensors live on `T`'s device."),
    RewriteDoc(
        "element_reads", _SYNC,
        rewrites="several elements of one tensor read as Python numbers on one line (`x, y = int(c[0]), int(c[1])`; "
                 "`float(T[k])`, `T[k].item()` with integer literals k) -> one `T[[k0, k1]].reshape(n).tolist()` on a "
                 "new line before it, the reads taking their numbers from that list.",
        refuses="fewer than two elements of one tensor, a tensor that is not a name or attribute or is bound on the "
                "line, a line with parts evaluated only sometimes (`if`-expressions, `and`/`or`, comprehensions, "
                "lambdas), a line that is not a simple statement.",
        static="`.tolist()` gives each element as the number `.item()` gives (one tensor, one dtype); `reshape(n)` "
               "accepts exactly the one-value elements the reads accepted.",
        verification="`T` is a tensor (not a list or an array) when its creation is not visible."),
    RewriteDoc(
        "masked_assign", _SYNC,
        rewrites="`X[m] = E` where E reads tensors only through the same mask (`Y[m]`) and combines them with `+ - *`, "
                 "comparisons, bit operators and dtype casts (`assigned[pos] = argmax[pos] + 1`) -> "
                 "`X.copy_(torch.where(m, E on the whole tensors, X))`.",
        refuses="a right side with a division, any other call or another mask; nothing read through the mask (a masked "
                "fill needs no sync); `X[m, ...]`; a mask that is not a name.",
        static="E on the whole tensors, where m holds, equals E on the selection; nothing in E can raise on the whole "
               "tensors; `copy_` writes X itself, in the dtype the indexed write required.",
        verification="m is a bool mask with the shape of X and of every Y, and the other names in E are numbers (or "
                     "broadcast like them); gradients equal (0 * inf where the mask is off would differ)."),
    RewriteDoc(
        "masked_reductions", _SYNC,
        rewrites="`torch.masked_select(x, m).mean()` -> `torch.where(m, x, 0).sum() / m.sum()` (`.sum()`: without the "
                 "division); the method form `x.masked_select(m)` too.",
        refuses="reductions with a dim, a dtype or keywords; other selections (`x[m]`).",
        static="equal up to float rounding, gradients zero where the mask is off, an empty mask gives nan / 0 as before.",
        verification="the mask is a bool tensor with the shape of the values (its sum counts the selected elements)."),
    RewriteDoc(
        "masked_losses", _SYNC,
        rewrites="a mean/sum-reduced loss of boolean-mask selections -- `F.smooth_l1_loss(pred[m], tgt[m])` (also l1, "
                 "mse, huber, binary_cross_entropy(_with_logits)), `((a[m] - b[m]).abs() * w).mean()`, `x[m].sum()` -- "
                 "and the guarded form `L if m.sum() > 0 else x.sum() * 0` -> the loss on the whole tensors (masked-off "
                 "inputs filled with 0, reduction=\"none\"), weighted by `m` (reshaped with trailing ones: a mask of "
                 "rows weights whole rows) and divided by the number of selected elements (clamped to 1 when guarded).",
        refuses="any op that is not elementwise and finite at finite inputs (log, sqrt, division by a tensor: a "
                "masked-off value could make a gradient nan), reductions with a dim or dtype, loss keywords other than "
                "reduction / beta / delta, two masks, a mask that is not a name, an operand bound from a value that "
                "reads the mask, a guard that is not an emptiness test or whose other branch is not `x.sum() * 0`, a "
                "reduction evaluated only sometimes (lambda, comprehension, and/or, another if-expression).",
        static="a boolean index has the leading shape of what it indexes, so the reshaped mask weights exactly the "
               "selected elements; masked-off rows compute finite values and get zero gradients; an empty mask gives "
               "nan for a mean and 0 for a sum (0 with the guard), as before.",
        verification="the mask is a bool tensor (an integer index makes torch.where raise: rejected); other operands "
                     "broadcast against one selected row as against the whole tensors. In the training loop's own "
                     "function, the whole-run check (equal parameters after every step)."),
    RewriteDoc(
        "stacked_reads", _SYNC,
        rewrites="`{k: v.item() for k, v in log_vars.items()}` (also `float(v)`, and `[t.item() for t in terms]`) -> "
                 "one `torch.stack([v.reshape(()) ...]).tolist()`, an empty container giving an empty result.",
        refuses="filters, nested `for`s, keys other than the loop's, values other than the loop value's read, an iterable "
                "that is not a name / attribute / constant subscript (it is evaluated more than once).",
        static="each read needs one element, as `reshape(())` does; keys and order are the loop's.",
        verification="the values share one dtype kind and device (a mix of integer and floating values would come back "
                     "as floats)."),
    RewriteDoc(
        "log_reads", _SYNC,
        rewrites="the per-step log line that reads a device value (`print(f\"... {loss.item():.6f}\")`, "
                 "`\"%f\" % loss`, `{loss:.6f}`, `float(loss)`) -> the detached value buffered with the rest of the "
                 "line, and the buffered lines printed LOG_INTERVAL (20) at a time after one `torch.stack(...).tolist()`. "
                 "The text printed is the same; it appears every 20 steps instead of every step.",
        refuses="another print, a `return`/`yield` or a loop `else` in the loop; the value changed in place there or not "
                "assigned a computed value in the loop (it could alias a parameter the step updates); several reads on "
                "the line (a number-formatted name last assigned a certain Python number -- `float()`, `int()`, "
                "`round()`, `len()`, a `time` clock, arithmetic of those -- is not a read); print keywords; `!r`, `%s` or a format spec that is not a float one.",
        static="everything else on the line is evaluated where it was; the same format spec formats the same number.",
        verification="whole run: the script runs with and without the rewrite for the profiled optimizer steps; the "
                     "parameters after every step must be equal and a rewritten line must have run. The value being a "
                     "tensor (not a Python number) is shown there too. If the step raises, the buffered lines of the last "
                     "interval are not printed."),
)

for _doc in DOCS:
    document_rewrite(_doc)
