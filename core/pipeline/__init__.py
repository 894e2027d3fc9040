"""Images + classes + models -> features (cached once; whole datasets into a sharded store,
locally or on Ray), segmentation and exports."""

from core.pipeline.cache import FeatureCache, default_cache_dir
from core.pipeline.cache_size import parse_size
from core.pipeline.export import (
    predictions_csv,
    predictions_json,
    provenance,
    provenance_text,
    write_predictions,
)
from core.pipeline.extraction import Extraction, ExtractSettings, extract, resolve_labels
from core.pipeline.segmentation import NOT_SEEN, UNLABELED, SegmentationResult, segment
from core.pipeline.sentences import with_lazsl_recipe
from core.pipeline.stages import Stage, extract_in_stages
from core.pipeline.store import FeatureStore

__all__ = [
    "FeatureCache", "default_cache_dir", "predictions_csv", "predictions_json", "provenance",
    "provenance_text", "write_predictions", "Extraction", "ExtractSettings", "extract",
    "resolve_labels", "SegmentationResult", "segment", "NOT_SEEN", "UNLABELED", "parse_size",
    "Stage", "extract_in_stages", "with_lazsl_recipe", "FeatureStore",
]
