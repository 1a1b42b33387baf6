"""mixpretrain.eval: downstream evaluation of pretrained encoders, the real-pretraining sampler
comparison and the pilot sweep (see docs/eval.md).

    from mixpretrain.eval.phantom_tasks import write_phantom_tasks
    from mixpretrain.eval.classify import run_classification
    from mixpretrain.eval.segment import run_segmentation
    from mixpretrain.eval.compare import run_comparison
    from mixpretrain.eval.pilot import run_pilot_sweep

Modules import torch / monai inside their functions only, so importing this package is cheap.
"""
