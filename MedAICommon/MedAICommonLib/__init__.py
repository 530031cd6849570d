"""MedAI shared code: geometry conventions, the MRML bridge, the headless runtime, the `medai` CLI.

Layout choice: Slicer's way to share code between scripted modules is a hidden module whose
folder is on ``sys.path``; ``MedAICommon`` is that hidden module and ``MedAICommonLib`` its
package. Outside Slicer the same package is installed by ``pip install`` of the project.
"""

__version__ = "0.1.0"
