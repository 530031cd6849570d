"""De-identification after DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile (subset).

Identifying attributes are removed (X), emptied (Z) or replaced by dummies (D); private tags and
curves/overlays comments are removed; every UID is replaced consistently through a
:class:`UidMap`, so that references between the RTDOSE, RTSTRUCT, RTPLAN and images of one patient
still match after de-identification. Patient Identity Removed = YES and the method are recorded.
"""

from __future__ import annotations

import hashlib

import pydicom
from pydicom.dataset import Dataset

# Keywords from PS3.15 Table E.1-1 (basic profile), grouped by action.
REMOVE = (
    "AccessionNumber",
    "AdditionalPatientHistory",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "BranchOfService",
    "CountryOfResidence",
    "CurrentPatientLocation",
    "DerivationDescription",
    "EthnicGroup",
    "ImageComments",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "InstitutionName",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "MilitaryRank",
    "NameOfPhysiciansReadingStudy",
    "Occupation",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientAge",
    "PatientBirthName",
    "PatientBirthTime",
    "PatientComments",
    "PatientMotherBirthName",
    "PatientReligiousPreference",
    "PatientSize",
    "PatientTelephoneNumbers",
    "PatientWeight",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "RequestingPhysician",
    "StationName",
    "StudyComments",
    "DeviceSerialNumber",
    "OperatorsName",
    "ProtocolName",
    "SeriesDescription",
    "StudyDescription",
    "RequestAttributesSequence",
    "PerformedProcedureStepDescription",
)
EMPTY = (
    "PatientBirthDate",
    "PatientSex",
    "ReferringPhysicianName",
    "StudyID",
    "ContentCreatorName",
    "ReviewerName",
    "ROIInterpreter",
)
DUMMY = {"PatientName": "ANONYMOUS", "PatientID": "ANON"}


class UidMap:
    """Consistent UID replacement: the same input UID always maps to the same new UID (per ``salt``)."""

    def __init__(self, salt: str = "medai"):
        self.salt = salt
        self.mapping: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        """The replacement of ``uid`` (a 2.25.<integer> UID derived from a salted hash)."""
        uid = str(uid)
        if uid not in self.mapping:
            digest = hashlib.sha256(f"{self.salt}:{uid}".encode()).hexdigest()
            self.mapping[uid] = "2.25." + str(int(digest[:30], 16))
        return self.mapping[uid]


_KEEP_UIDS = {
    "SOPClassUID",
    "ReferencedSOPClassUID",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "CodingSchemeUID",
}


def _walk(ds: Dataset, uid_map: UidMap) -> None:
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _walk(item, uid_map)
            continue
        if elem.tag.is_private:
            del ds[elem.tag]
            continue
        keyword = elem.keyword
        if keyword in REMOVE:
            del ds[elem.tag]
        elif keyword in EMPTY:
            elem.value = ""
        elif keyword in DUMMY:
            elem.value = DUMMY[keyword]
        elif elem.VR == "UI" and keyword not in _KEEP_UIDS and elem.value:
            if elem.VM > 1:
                elem.value = [uid_map(v) for v in elem.value]
            else:
                elem.value = uid_map(elem.value)


def deidentify_dataset(ds: Dataset, uid_map: UidMap | None = None, patient_id: str | None = None) -> Dataset:
    """De-identify ``ds`` in place (and return it); ``uid_map`` keeps UIDs consistent across files."""
    uid_map = uid_map or UidMap()
    _walk(ds, uid_map)
    if patient_id:
        ds.PatientID = patient_id
        ds.PatientName = patient_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 E.1 Basic Profile, UID remap"
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def deidentify_file(source, target, uid_map: UidMap | None = None, patient_id: str | None = None):
    """Read ``source``, de-identify it and write ``target`` (returns the target path)."""
    ds = pydicom.dcmread(str(source), force=True)
    deidentify_dataset(ds, uid_map, patient_id)
    ds.save_as(str(target))
    return target
