# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 9: the verification protocol
#
# **Learning goals.** After this tutorial you can
# - run LFW's 10-fold protocol: a threshold fitted on nine folds, accuracy measured on the tenth;
# - compute the ROC, the true accept rate at a fixed false accept rate (TAR@FAR), and the equal error rate;
# - say which FARs a test set can measure at all;
# - evaluate open-set identification (DIR@FAR): probes from enrolled and from unseen identities.
#
# Everything is checked against `amnp.evaluation`. Definitions: `docs/derivations.md`,
# [Verification metrics](../docs/derivations.md#verification).

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"  # unused here: the full run takes seconds,
# and its printed numbers are the ones tutorials/README.md quotes
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)

import numpy as np
from matplotlib.figure import Figure

import checks
from amnp import evaluation

# %% [markdown]
# ## 0. Synthetic "faces"
# Each identity is a random direction in 64-D; each image of it is that direction plus noise.
# Scores are cosine similarities of L2-normalised embeddings. LFW's layout: 10 folds of 300 same
# and 300 different pairs (6000 pairs; the quick run uses the same layout).

# %%
rng = np.random.default_rng(9)
DIM, IDENTITIES, IMAGES = 64, 400, 4
centres = rng.standard_normal((IDENTITIES, DIM))
labels = np.repeat(np.arange(IDENTITIES), IMAGES)
emb = centres[labels] + 1.1 * rng.standard_normal((labels.size, DIM))


def make_pairs(per_fold=300, folds=10):
    pairs, same = [], []
    for _ in range(folds):
        for _ in range(per_fold):                       # same identity, two different images
            ident = rng.integers(IDENTITIES)
            a, b = rng.choice(IMAGES, 2, replace=False)
            pairs.append((ident * IMAGES + a, ident * IMAGES + b)); same.append(True)
        for _ in range(per_fold):                       # two different identities
            i, j = rng.choice(IDENTITIES, 2, replace=False)
            pairs.append((i * IMAGES + rng.integers(IMAGES), j * IMAGES + rng.integers(IMAGES))); same.append(False)
    return np.array(pairs), np.array(same), np.repeat(np.arange(folds), 2 * per_fold)


pairs, same, folds = make_pairs()
scores = evaluation.pair_scores(emb, pairs)
print(f"{len(pairs)} pairs; mean score same {scores[same].mean():.3f}, different {scores[~same].mean():.3f}")

# %% [markdown]
# ## 1. The best threshold
# Predict "same" when score ≥ t. Only the order of the scores matters, so the candidates are the
# midpoints between consecutive distinct scores, plus one below all and one above all.
#
# ### Exercise 1

# %%
def best_threshold(scores, same):
    """The threshold maximising the accuracy of 'same when score >= t'."""
    ### BEGIN SOLUTION
    u = np.unique(scores)
    candidates = np.concatenate(([u[0] - 1], (u[:-1] + u[1:]) / 2, [u[-1] + 1]))
    accuracy = [np.mean((scores >= t) == same) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])
    ### END SOLUTION


checks.check_best_threshold(best_threshold)

# %% [markdown]
# ### Exercise 2: 10-fold accuracy
# For each fold k: fit the threshold on the **other** nine folds, measure accuracy on fold k.
# Return the mean over folds.

# %%
def kfold_accuracy(scores, same, folds):
    ### BEGIN SOLUTION
    accuracies = []
    for k in np.unique(folds):
        test = folds == k
        t = best_threshold(scores[~test], same[~test])
        accuracies.append(np.mean((scores[test] >= t) == same[test]))
    return float(np.mean(accuracies))
    ### END SOLUTION


checks.check_kfold_accuracy(kfold_accuracy)
result = evaluation.kfold_verification(scores, same, folds)
print(f"10-fold accuracy: yours {kfold_accuracy(scores, same, folds):.4f}, "
      f"amnp {result['mean']:.4f} +- {result['std']:.4f}")

# %% [markdown]
# ## 2. ROC, TAR@FAR and EER
# For a threshold t: TAR(t) = share of same pairs accepted, FAR(t) = share of different pairs
# accepted. Sweeping t from +∞ down traces the ROC from (0, 0) to (1, 1), one point per distinct score.
#
# ### Exercise 3

# %%
def roc(scores, same):
    """-> (far, tar), thresholds +inf then every distinct score, descending."""
    ### BEGIN SOLUTION
    thresholds = np.concatenate(([np.inf], np.unique(scores)[::-1]))
    far = np.array([np.mean(scores[~same] >= t) for t in thresholds])
    tar = np.array([np.mean(scores[same] >= t) for t in thresholds])
    return far, tar
    ### END SOLUTION


checks.check_roc(roc)

# %% [markdown]
# ### Exercise 4: TAR at a fixed FAR
# The largest TAR among the ROC points whose FAR does not exceed the target.

# %%
def tar_at_far(scores, same, far_target):
    ### BEGIN SOLUTION
    far, tar = roc(scores, same)
    n_diff = np.count_nonzero(~same)
    allowed = np.floor(far_target * n_diff * (1 + 1e-9))
    return float(tar[np.rint(far * n_diff) <= allowed].max())
    ### END SOLUTION


checks.check_tar_at_far(tar_at_far)

# %% [markdown]
# ### Exercise 5: the equal error rate
# Where FAR = 1 − TAR on the ROC, interpolated linearly on the segment where FAR − (1 − TAR) changes sign.

# %%
def eer(scores, same):
    ### BEGIN SOLUTION
    far, tar = roc(scores, same)
    d = far - (1 - tar)
    b = int(np.argmax(d >= 0))
    if d[b] == 0:
        return float(far[b])
    a = b - 1
    alpha = -d[a] / (d[b] - d[a])
    return float(far[a] + alpha * (far[b] - far[a]))
    ### END SOLUTION


checks.check_eer(eer)

# %% [markdown]
# **Predict first.** There are 3000 different pairs. Which threshold does TAR @ FAR 1e-4 use, and
# how will its TAR compare with TAR @ FAR 1e-3?

# %%
for target in (1e-2, 1e-3, 1e-4):
    print(f"TAR @ FAR {target:g}: yours {tar_at_far(scores, same, target):.4f}, "
          f"amnp {evaluation.tar_at_far(scores, same, [target])[target]:.4f}")
print(f"EER: yours {eer(scores, same):.4f}, amnp {evaluation.equal_error_rate(scores, same):.4f}")
far, tar = roc(scores, same)
fig = Figure(figsize=(5, 4))
ax = fig.subplots()
resolution = 1 / np.count_nonzero(~same)   # the smallest non-zero FAR these pairs can measure
ax.semilogx(far[far > 0], tar[far > 0])
ax.set_xlim(resolution / 1.5, 1.0)
ax.axvline(resolution, color="gray", linestyle=":", label="1 / #different pairs")
ax.set_xlabel("false accept rate")
ax.set_ylabel("true accept rate")
ax.set_title("ROC of the synthetic pairs")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "09_roc.png"), dpi=110)
checks.show(os.path.join(OUT, "09_roc.png"))

# %% [markdown]
# **Inline question 1.** LFW has 3000 different pairs. What is the smallest non-zero FAR it can measure?
# (a number, to two significant digits)

# %%
### BEGIN SOLUTION
answer_far_resolution = 1 / 3000
### END SOLUTION
checks.check_answer("09.far_resolution", answer_far_resolution)

# %% [markdown]
# ## 3. Open-set identification: DIR@FAR
# A gallery holds one image of each enrolled identity. Probes come from enrolled identities
# (genuine) and from identities never enrolled (impostors). The system answers with its best
# gallery match if that score passes a threshold, else "unknown". The threshold is set so that at
# most a share FAR of the impostor probes are (wrongly) answered; the detection and identification
# rate DIR is the share of genuine probes answered **with the right identity**. The scores are
# cosine similarities: L2-normalise the rows of the gallery and of the probes first.
#
# ### Exercise 6

# %%
def dir_at_far(gallery, gallery_labels, probes, probe_labels, far):
    ### BEGIN SOLUTION
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    s = p @ g.T
    best = s.argmax(axis=1)
    best_score = s[np.arange(len(p)), best]
    genuine = np.isin(probe_labels, gallery_labels)
    impostor = np.sort(best_score[~genuine])[::-1]
    allowed = int(np.floor(far * impostor.size * (1 + 1e-9)))
    threshold = impostor[allowed] if allowed < impostor.size else -np.inf
    hit = (best_score > threshold) & (gallery_labels[best] == probe_labels)
    return float(hit[genuine].mean())
    ### END SOLUTION


checks.check_dir_at_far(dir_at_far)

# %%
enrolled = np.arange(IDENTITIES // 2)
gallery = emb[enrolled * IMAGES]                                  # first image of each enrolled identity
not_in_gallery = np.flatnonzero(labels * IMAGES != np.arange(labels.size))
probe_index = rng.permutation(not_in_gallery)[:1200]  # enrolled and unseen people
genuine = np.isin(labels[probe_index], enrolled)
print(f"{genuine.sum()} genuine probes, {(~genuine).sum()} impostor probes")
unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
cosines = unit(emb[probe_index]) @ unit(gallery).T
theirs = evaluation.dir_at_far(cosines, enrolled, labels[probe_index], (0.1, 0.01))
for far in (0.1, 0.01):
    mine = dir_at_far(gallery, enrolled, emb[probe_index], labels[probe_index], far)
    print(f"DIR @ FAR {far:g}: yours {mine:.4f}, amnp {theirs[far]:.4f}")

# %% [markdown]
# ## Summary
# - The 10-fold protocol never lets a fold's pairs choose its own threshold.
# - TAR@FAR is limited by the number of impostor pairs: below 1/#different it means "zero false accepts".
# - The EER is one point of the ROC; report the curve or TAR at the FAR you care about.
# - Open-set identification must both reject unknown people and name known ones: DIR@FAR measures both.
#
# ## Open exercises
# 1. Fuse each embedding with a "mirror" (another noisy draw) by summing before normalising. How much does the 10-fold accuracy change?
# 2. Bootstrap the pairs to put a confidence interval on TAR @ FAR 1e-3. How wide is it with 3000 impostor pairs?
# 3. Make DIR@FAR rank-k: accept if the right identity is among the k best that pass the threshold.
