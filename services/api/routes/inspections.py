"""Reading inspections back: list with filters, one record, its heat-map overlay."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.responses import HTMLResponse

from schemas.inspection import Inspection
from services.api.context import Context
from services.api.filters import PARAM_HELP, inspection_filters
from services.api.models import InspectionPage
from services.api.report import MAX_INSPECTIONS, inspection_report, range_report
from services.api.thumbnails import frame_pixels, overlay_of, shrink
from services.storage.query import InspectionQuery
from services.vision.overlay import decode_heatmap, encode_png

router = APIRouter(tags=["inspections"])


def _get_or_404(context: Context, frame_id: str) -> Inspection:
    inspection = context.records.get_inspection(frame_id)
    if inspection is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no inspection with frame_id {frame_id!r}")
    return inspection


@router.get("/v1/inspections", description=f"Newest first. `param`: {PARAM_HELP}")
def list_inspections(
    context: Context,
    filters: Annotated[InspectionQuery, Depends(inspection_filters)],
    with_embedding: Annotated[bool, Query(description="Include the image embeddings (large)")] = False,
) -> InspectionPage:
    """Inspections matching the filters, a page at a time."""
    items = context.records.query_inspections(filters)
    if not with_embedding:
        items = [item.model_copy(update={"embedding": []}) for item in items]
    total = context.records.count_inspections(filters)
    return InspectionPage(total=total, limit=filters.limit, offset=filters.offset, items=items)


@router.get(
    "/v1/reports/inspections.html",
    response_class=HTMLResponse,
    description=f"The same filters as /v1/inspections (`param`: {PARAM_HELP}); `limit` is how many NG "
    f"inspections are shown (the highest-scoring; at most {MAX_INSPECTIONS}).",
)
def report_of_range(
    context: Context,
    filters: Annotated[InspectionQuery, Depends(inspection_filters)],
) -> HTMLResponse:
    """A self-contained HTML report of a period: counts, the root-cause ranking, and the
    highest-scoring NG inspections with overlay, defects, process data and telling parameters."""
    return HTMLResponse(
        range_report(context.records, context.blobs, filters, min(filters.limit, MAX_INSPECTIONS))
    )


@router.get("/v1/inspections/{frame_id}", responses={404: {"description": "No such inspection"}})
def get_inspection(context: Context, frame_id: str) -> Inspection:
    """One inspection, whole."""
    return _get_or_404(context, frame_id)


@router.get(
    "/v1/inspections/{frame_id}/report.html",
    response_class=HTMLResponse,
    responses={404: {"description": "No such inspection"}},
)
def report_of_inspection(context: Context, frame_id: str) -> HTMLResponse:
    """A self-contained HTML report of one inspection: overlay, defects, process data, and the
    parameters of this frame that lie in a risky range of the week's root-cause ranking."""
    return HTMLResponse(inspection_report(context.records, context.blobs, _get_or_404(context, frame_id)))


@router.get(
    "/v1/inspections/{frame_id}/overlay.png",
    name="inspection_overlay",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "No inspection or no heat map"}},
)
def inspection_overlay(
    context: Context,
    frame_id: str,
    max_side: Annotated[
        int | None, Query(ge=16, le=8192, description="Scale down to this longer side")
    ] = None,
) -> Response:
    """The heat map over the frame, defects boxed (PNG). When the frame is no longer stored
    (``keep_frames: false``), the heat map and the boxes are drawn over grey at the frame's size."""
    inspection = _get_or_404(context, frame_id)
    if inspection.heatmap is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"inspection {frame_id} has no heat map stored")
    try:
        heatmap = decode_heatmap(context.blobs.get(inspection.heatmap.uri))
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"the heat map of inspection {frame_id} is no longer in the blob store"
        ) from None
    frame = frame_pixels(context.blobs, inspection, max_side)
    overlay = overlay_of(inspection, heatmap, frame, max_side)
    if max_side is not None:
        overlay = shrink(overlay, max_side)
    return Response(
        encode_png(overlay), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )
