"""Detection kit: COCO/VOC data, detectors, losses and COCO/VOC metrics."""
