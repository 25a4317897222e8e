"""The app's pages, in one place: ``main.py`` builds the navigation from this list and the tests
open every page from it. Adding a page is a file in ``app/views/`` and one line here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageSpec:
    title: str         # the page's title and navigation label
    file: str          # the script, relative to app/ (what st.Page and AppTest.switch_page take)
    url: str           # url_path: /attention, /train, …
    icon: str
    default: bool = False


PAGES: tuple[PageSpec, ...] = (
    PageSpec("Train", "views/train.py", "train", ":material/model_training:"),
    PageSpec("Attention", "views/attention.py", "attention", ":material/grid_on:", default=True),
    PageSpec("Generate", "views/generate.py", "generate", ":material/edit_note:"),
    PageSpec("Surprise", "views/surprise.py", "surprise", ":material/bolt:"),
    PageSpec("Embeddings", "views/embeddings.py", "embeddings", ":material/scatter_plot:"),
    PageSpec("Logit lens", "views/logit_lens.py", "logit-lens", ":material/layers:"),
    PageSpec("Ablation", "views/ablation.py", "ablation", ":material/content_cut:"),
    PageSpec("Compare", "views/compare.py", "compare", ":material/compare:"),
    PageSpec("Mechanics", "views/mechanics.py", "mechanics", ":material/function:"),
)


def page(title: str) -> PageSpec:
    """The page with this title (raises ``KeyError`` naming the titles there are)."""
    for p in PAGES:
        if p.title == title:
            return p
    raise KeyError(f"no page titled {title!r}; pages: {[p.title for p in PAGES]}")
