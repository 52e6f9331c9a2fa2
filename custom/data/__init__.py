from .checks import inference_items, partition_readable, require_labels, require_readable, write_bad_files
from .datalists import (
    build_kermany,
    class_weights,
    joint_label_budget,
    label_budget,
    load_datalist,
    resolve_datalist,
    write_datalist,
)
from .domains import check_eval_domains, domain_items
from .isolation import IsolatedDataLoader, IsolatedDataset, skip_empty_batch
