"""Results as DICOM and the DICOMweb worker (issue 21). No web framework below this package.

- `structured_report(source, Result)`: the SR (TID 1500 in a Comprehensive 3D SR) for one scored image;
- `secondary_capture(source, explanation)`: the overlay as a Secondary Capture with the research-only banner;
- `read_source(data)`: the header of a DICOM upload a result can be placed next to;
- `pneumonia.dicom.worker`: the QIDO/WADO/STOW worker behind `python -m app.pacs`.

Importing this package imports highdicom (not TensorFlow); `import pneumonia` does not import it.
"""

from pneumonia.dicom.common import (
    RESEARCH_BANNER,
    SC_SERIES_DESCRIPTION,
    SR_SERIES_DESCRIPTION,
    DicomResultError,
    ResultUIDs,
    is_dicom,
    read_source,
    result_uids,
)
from pneumonia.dicom.sc import secondary_capture, with_banner
from pneumonia.dicom.sr import Result, structured_report

__all__ = [
    "RESEARCH_BANNER",
    "SC_SERIES_DESCRIPTION",
    "SR_SERIES_DESCRIPTION",
    "DicomResultError",
    "Result",
    "ResultUIDs",
    "is_dicom",
    "read_source",
    "result_uids",
    "secondary_capture",
    "structured_report",
    "with_banner",
]
