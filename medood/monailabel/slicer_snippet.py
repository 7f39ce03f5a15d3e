"""The Slicer-side snippet that brings a served case's float map and scores into 3D Slicer.

MONAI Label's Slicer module shows every result image as a labelmap (a float map would be quantised), so the
module's *Run* gives the mask only. :data:`SLICER_SNIPPET`, pasted into Slicer's Python console (or run with
``exec``), asks the server for the float map (``{"anomaly_output": "map"}``) with MONAI Label's own client
(``MONAILabelLib``, part of Slicer's MONAILabel extension), shows it over the scan with the Inferno colour table
at the bundle's healthy-calibration window (values below the window's low end transparent), and prints the
volume score, ``flagged`` (volume score > the healthy score threshold) and the worst slices. ``send_volume``
uploads the volume open in Slicer to a temporary session first (``PUT /session/``), for scans that are not
studies of the server. ``docs/monailabel_slicer.md`` quotes it; ``medood label snippet`` prints it.
"""

from __future__ import annotations

from medood.reports.slicer import COLOR_NODE

__all__ = ["SLICER_SNIPPET"]

SLICER_SNIPPET = f'''\
# medood: a served case's anomaly map and scores in 3D Slicer (View > Python Console; needs the MONAILabel extension)
import os
import slicer
from MONAILabelLib import MONAILabelClient


def _client(server, token=None):
    client = MONAILabelClient(server, tmpdir=slicer.app.temporaryPath)
    if token:  # the server's token (medood label serve --token / MEDOOD_LABEL_TOKEN)
        client.update_auth({{"token_type": "Bearer", "access_token": token}})
    return client


def send_volume(server, volume, token=None):
    """Upload a volume open in Slicer to a temporary session of the server; returns the session id."""
    path = os.path.join(slicer.app.temporaryPath, "medood_session.nii.gz")
    slicer.util.saveNode(volume, path)
    return _client(server, token).create_session(path)["session_id"]


def show_anomaly(server, model, image, session_id=None, token=None, background=None):
    """Show the float anomaly map of a study (or session) at its calibrated window; print the scores."""
    map_file, result = _client(server, token).infer(model, image, {{"anomaly_output": "map"}}, session_id=session_id)
    heat = slicer.util.loadVolume(map_file, properties={{"labelmap": False, "name": image + " anomaly map"}})
    display = heat.GetDisplayNode()
    display.SetAndObserveColorNodeID("{COLOR_NODE}")
    if result.get("window"):  # healthy-calibration window; without one Slicer auto-windows
        low, high = result["window"]
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(low, high)
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(low)
    slicer.util.setSliceViewerLayers(background=background, foreground=heat, foregroundOpacity=0.5)
    print(f"{{image}}: volume score {{result['volume_score']}}, flagged {{result['flagged']}} "
          f"(healthy score threshold {{result['score_threshold']}}; window {{result.get('window')}})")
    for w in result["worst_slices"]:
        print(f"  worst slice: voxel axis {{w['axis']}}, index {{w['slice']}}, score {{w['score']:.4g}}")
    return heat, result
'''
