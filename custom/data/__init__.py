from .checks import inference_items, partition_readable, require_readable
from .datalists import (
    build_kermany,
    class_weights,
    load_datalist,
    resolve_datalist,
    write_datalist,
)
