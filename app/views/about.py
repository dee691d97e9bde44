"""The About page: the method and its formulas, which parameters each gradient reaches, how to read the app."""

from __future__ import annotations

import streamlit as st

from app import locations

# Forward edges in grey; each gradient is drawn as a dashed arrow running back along the edges it flows through,
# so the picture shows at a glance which parameters each loss updates.
GRADIENT_FLOW = """
digraph ECAML {
  rankdir=LR; bgcolor="transparent"; nodesep=0.5; ranksep=0.55;
  node [fontname="Helvetica", fontsize=14, shape=box, style="rounded,filled", color="#9e9e9e", fillcolor="#ffffff"];
  edge [fontname="Helvetica", fontsize=12, color="#9e9e9e", arrowsize=0.7];

  x        [label="image x", shape=plaintext, style=""];
  backbone [label="backbone θ", fillcolor="#dbeafe", color="#0072B2", penwidth=2];
  f        [label="feature f", shape=ellipse];
  head     [label="head W, b", fillcolor="#fef3c7", color="#E69F00", penwidth=2];
  z        [label="z = W f + b", shape=ellipse];
  metric   [label="L_metric", shape=note, fillcolor="#e0f2fe"];
  stop     [label="stop-gradient\\n(∇ stops here)", shape=octagon, fillcolor="#f3f4f6"];
  head2    [label="head W, b\\n(the same weights)", fillcolor="#fef3c7", color="#E69F00", penwidth=2];
  zbar     [label="z̄ = W sg(f) + b", shape=ellipse];
  energy   [label="λ · log E", shape=note, fillcolor="#ffedd5"];
  rownorm  [label="R(W)", shape=note, fillcolor="#ffedd5"];

  x -> backbone -> f -> head -> z -> metric;
  f -> stop -> head2 -> zbar -> energy;
  head2 -> rownorm;

  edge [style=dashed, penwidth=2, dir=back, arrowtail=normal];
  backbone -> f -> head -> z -> metric [color="#0072B2"];
  head2 -> zbar -> energy [color="#D55E00"];
  head2 -> rownorm [color="#D55E00"];
}
"""


def render() -> None:
    st.title("About ECAML")
    st.markdown(
        "**Energy Confused Adversarial Metric Learning** (Chen & Deng, AAAI 2019) targets *zero-shot* retrieval "
        "and clustering: train an embedding on some classes, then search and cluster images of classes it never "
        "saw. A metric loss alone tends to over-fit the features to the training classes. ECAML adds a small "
        "adversary, the **Energy Confusion** term, that tries to *pull different classes together* — but it may "
        "only move the embedding head. To keep the metric loss low anyway, the backbone has to learn features that "
        "are more general, which is what helps on unseen classes."
    )
    show_method()
    show_gradient_flow()
    show_reading_guide()
    show_sources()


def show_method() -> None:
    st.header("The method")
    st.markdown(
        "With backbone feature $f(x)$ and raw embedding $z = W f(x) + b$ of the head $(W, b)$, for the "
        "inter-class pairs $P$ of a batch (10 random partners per image in the reference):"
    )
    st.latex(
        r"E \;=\; \frac{1}{|P|} \sum_{(i,j) \in P} \tfrac{1}{2}\,\lVert z_i - z_j \rVert^2, \qquad L_{ec} \;=\; \log E"
    )
    st.markdown(
        "Minimising $\\log E$ confuses the metric. Without a counterweight it could simply shrink $W$, so the "
        "rows $w_r$ of $W$ are held near unit length ($d$ = embedding size):"
    )
    st.latex(r"R(W) \;=\; \frac{0.5}{d} \sum_{r=1}^{d} \left(\lVert w_r \rVert^2 - 1\right)^2")
    st.markdown(
        "Each parameter group minimises its own objective; the EC branch sees the feature through a stop-gradient:"
    )
    st.latex(
        r"""\begin{aligned}
        \text{backbone } \theta:&\quad \min_\theta\; L_{metric}(\theta, W) \\
        \text{head } W, b:&\quad \min_{W,b}\; L_{metric}(\theta, W)
            \;+\; \lambda \log E\big(\mathrm{sg}(f), W\big) \;+\; R(W)
        \end{aligned}"""
    )
    st.markdown(
        "The reference uses $\\lambda = 0.13$; $\\lambda = 0$ is the plain baseline. ECAML is a regulariser: "
        "it sits on top of any metric loss."
    )


def show_gradient_flow() -> None:
    st.header("Which parameters each gradient reaches")
    st.graphviz_chart(GRADIENT_FLOW)
    st.caption(
        "Grey arrows: the forward pass. Blue dashed: the gradient of the metric loss, which flows back through the "
        "head into the backbone. Orange dashed: the gradients of λ·log E and R(W), which reach the head and stop at "
        "the stop-gradient, so the backbone never sees them. Both heads are the same weights W, b, applied twice."
    )


def show_reading_guide() -> None:
    st.header("How to read each page")
    st.markdown(
        """
- **Compare** — opens with a short guide (hide it with one click) and the study's multi-seed effect beside the one
  seed the table holds. The table: Recall@K, NMI, MAP@R and R-Precision on the unseen classes, with each run's gain or
  loss against the **baseline** you choose (by default the first EC-off run). A Δ is shown only between runs of the
  same data set, class split and base loss; any other run is listed with the reason it has none. The training curves
  open on **log E**: it falls with EC on and rises with EC off (EC-off runs measure the energy without training on
  it); runs of different losses get one chart each, since their losses have different scales. Quality during
  training is shown on validation classes when a run has them; test-class points are marked *not for model
  selection*. Runs of one setting with several seeds are summarised as mean ± standard deviation. The distance
  histograms share one x range, fitted to the data, and one y scale: the less the two colours overlap, the better
  retrieval works.
- **Embeddings** — the unseen-class embeddings mapped to 2-D, one panel per run, aligned so an image sits in about the
  same place in each. Compare how tight and how separate the classes are; lasso points to see their images.
- **Retrieval** — one query, its nearest neighbours in each run side by side; green frames are the query's class, red
  ones are not. An upload is shown as the model sees it (after conversion), with a warning and an offer to invert it
  when it looks unlike the training images (a black-on-white drawing, when the digits are white on black).
- **Train** — starts from the featured setting, so your run compares with the shipped pair; one click trains the
  EC-off (or EC-on) twin of any run, identical but for λ. The curves update twice a second, stay when the run ends,
  and can be replayed step by step.
"""
    )


def show_sources() -> None:
    st.header("Where the runs come from")
    st.markdown(
        f"Shipped runs: `{locations.shown_path(locations.checkpoints_dir())}/` (read only). Your runs: "
        f"`{locations.shown_path(locations.runs_dir())}/`. Embeddings and projections are cached in "
        f"`{locations.shown_path(locations.cache_dir())}/`. Paper: B. Chen and W. Deng, *Energy Confused Adversarial Metric "
        "Learning for Zero-Shot Image Retrieval and Clustering*, AAAI 2019 (arXiv:1901.07169)."
    )


# Streamlit runs a page file as "__main__"; importing it (as the tests do) only defines its functions.
if __name__ == "__main__":
    render()
