"""Publishing a run on the Hugging Face Hub: the augmented dataset, the textual-inversion
tokens and the retrained classifier, each with a card.

Every artifact has a pair of functions. ``save_<artifact>_folder(run_dir, out_dir,
repo_id)`` writes exactly the files its Hub repository will hold, a folder twin that loads
offline the way the Hub copy loads. ``push_<artifact>(run_dir, repo_id, ...)`` writes that
twin to a temporary folder and uploads it with ``HfApi.upload_folder``, so the Hub
receives byte for byte what a twin holds; :func:`publish_run` does all three, cross-linked.

The modules: ``run`` (reading a run folder, repository ids), ``cards`` (the cards, from
the templates in ``templates/``), ``folders`` (the twins) and ``push`` (uploading, with
the token scan).
"""

from .cards import (
    ARXIV_ID,
    CITATION,
    COLUMN_DESCRIPTIONS,
    DATASET_CONFIG_SECTIONS,
    METRICS,
    MODEL_CONFIG_SECTIONS,
    MODEL_ID_KEYS,
    MODEL_ROLES,
    SPLIT_DESCRIPTIONS,
    cards_dir,
    dataset_card,
    embeddings_card,
    model_card,
    render_card,
)
from .folders import (
    CARD_FILE,
    DEFAULT_MAX_SHARD_SIZE,
    read_tokens,
    save_dataset_folder,
    save_embeddings_folder,
    save_model_folder,
)
from .push import (
    ARTIFACTS,
    Artifact,
    assert_token_free,
    publish_run,
    push_dataset,
    push_embeddings,
    push_model,
    repo_url,
)
from .run import NA, REQUIRED_METRICS, SOURCE_DATASETS, Run, SourceDataset, load_run_dataset, read_run, repo_ids

__all__ = [
    "ARTIFACTS",
    "ARXIV_ID",
    "CARD_FILE",
    "CITATION",
    "COLUMN_DESCRIPTIONS",
    "DATASET_CONFIG_SECTIONS",
    "DEFAULT_MAX_SHARD_SIZE",
    "METRICS",
    "MODEL_CONFIG_SECTIONS",
    "MODEL_ID_KEYS",
    "MODEL_ROLES",
    "NA",
    "REQUIRED_METRICS",
    "SOURCE_DATASETS",
    "SPLIT_DESCRIPTIONS",
    "Artifact",
    "Run",
    "SourceDataset",
    "assert_token_free",
    "cards_dir",
    "dataset_card",
    "embeddings_card",
    "load_run_dataset",
    "model_card",
    "publish_run",
    "push_dataset",
    "push_embeddings",
    "push_model",
    "read_run",
    "read_tokens",
    "render_card",
    "repo_ids",
    "repo_url",
    "save_dataset_folder",
    "save_embeddings_folder",
    "save_model_folder",
]
