#!/usr/bin/env bash
# The reference work's model zoo and studies, as bundled-training-module runs (issue 4).
# Costs come from ../shared/docs/compute.md (2 CPU cores); every run checkpoints each epoch, so
# `python -m bcclassify train --resume RUN_ID` continues one that a session end interrupted.
# Architectures without ImageNet weights here (cnn, unet, resnet50, densenet201, vgg16) train from
# scratch at a smaller input size; their run records say so.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/pbc224}
train() { python -m bcclassify train --data "$DATA" "$@"; }

case "${1:-help}" in
  hybrid)       train --arch hybrid --image-size 128 --epochs 4 --lr 3e-4 --freeze-until auto --aug-copies 1 ;;
  xception)     train --arch xception --image-size 128 --epochs 4 --lr 3e-4 --freeze-until auto --aug-copies 1 ;;
  inceptionv3)  train --arch inceptionv3 --image-size 128 --epochs 4 --lr 3e-4 --freeze-until auto --aug-copies 1 ;;
  mobilenetv2)  train --arch mobilenetv2 --image-size 96 --epochs 6 --lr 1e-3 ;;
  supcon)       train --arch supcon --image-size 96 --epochs 4 --head-epochs 2 --lr 1e-3 ;;
  cnn-cv)       train --arch cnn --image-size 48 --epochs 8 --folds 5 ;;
  unet)         train --arch unet --image-size 48 --epochs 8 ;;
  resnet50)     train --arch resnet50 --image-size 48 --epochs 6 ;;
  densenet201)  train --arch densenet201 --image-size 48 --epochs 6 ;;
  vgg16)        train --arch vgg16 --image-size 48 --epochs 6 ;;
  smote-study)  train --arch mobilenetv2 --image-size 128 --epochs 4 --no-augment --note "SMOTE study: without"
                train --arch mobilenetv2 --image-size 128 --epochs 4 --no-augment --smote --note "SMOTE study: with" ;;
  shuffle-study) train --arch cnn --image-size 48 --epochs 8 --note "shuffle study: shuffled"
                 train --arch cnn --image-size 48 --epochs 8 --no-shuffle --note "shuffle study: class order" ;;
  *) echo "usage: $0 hybrid|xception|inceptionv3|mobilenetv2|supcon|cnn-cv|unet|resnet50|densenet201|vgg16|smote-study|shuffle-study" ;;
esac
