"""DICOM-RT: RTDOSE/RTSTRUCT/RTPLAN reading and writing with pydicom, beams to and from RTPLAN, de-identification. Datasets and arrays in LPS; no MRML."""
