"""The Lightning callbacks, by the class paths configs use (`pds_lightning.callbacks.SamplingCallback`,
`pds_lightning.callbacks.SampleWriter`, `pds_lightning.callbacks.TaskWriter`,
`pds_lightning.callbacks.PreconditionerImages`)."""

from pds_lightning.filter_images import PreconditionerImages
from pds_lightning.sampling_callback import SamplingCallback
from pds_lightning.writer import SampleWriter, TaskWriter

__all__ = ["PreconditionerImages", "SampleWriter", "SamplingCallback", "TaskWriter"]
