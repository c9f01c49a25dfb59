#!/usr/bin/env bash
# The reference work's model zoo and studies, as runs of the bundled training module.
# Sized from ../shared/docs/compute.md for 2 CPU cores: pretrained trunks fine-tune their top
# blocks on cached stem activations; the architectures without ImageNet weights here (cnn, unet,
# resnet50, densenet201, vgg16) train from scratch at a small input size, which their run records
# say. Every run checkpoints each epoch: `python -m bcclassify train --resume RUN_ID` continues one
# that a session end interrupted. `all` runs the queue in order of what the app needs first.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/pbc224}
PY=${PYTHON:-python}
train() { "$PY" -m bcclassify train --data "$DATA" "$@"; }

# Progressive resizing (issue 25): run ids are fixed so that stage 2 finds stage 1 and either
# can be resumed.
# $3: the learning rate, where the default (stage 1 1e-3, stage 2 3e-4) does not suit the arch.
progressive_stage1() {
  train --arch "$1" --image-size 85 --center-crop 0.75 --epochs "$2" --lr "${3:-1e-3}" \
    --run-id "20261205-$1-85px-crop75" \
    --note "issue 25: $1 from scratch, stage 1 of progressive resizing (central 64 px of 85); stage 2 continues at the central 128 px of 171"
}
progressive_stage2() {
  train --arch "$1" --image-size 171 --center-crop 0.75 --epochs "$2" --lr "${3:-3e-4}" \
    --init-from "20261205-$1-85px-crop75" --run-id "20261205-$1-171px-crop75" \
    --note "issue 25: $1, stage 2 of progressive resizing: run 20261205-$1-85px-crop75 continued at the central 128 px of 171"
}

run() {
  case "$1" in
    # The default model (20261126-092156, 85 min on 2 cores): the network sees the central 75% of
    # a 213 px image (160 px), so the centred cell gets 1.25x the linear resolution of the 171 px
    # run below at ~1.6x its compute. Installed with four averaged views of the square:
    # python -m bcclassify promote RUN_ID --name hybrid --default --views identity,flip_lr,flip_ud,rot180
    hybrid)       train --arch hybrid --image-size 213 --center-crop 0.75 --epochs 4 --lr 3e-4 --freeze-until auto --aug-copies 2 --note "hybrid on the central 160 px of a 213 px image" ;;
    # The second default (20261126-072251): the central 128 px of a 171 px image.
    hybrid-171)   train --arch hybrid --image-size 171 --center-crop 0.75 --epochs 4 --lr 3e-4 --freeze-until auto --aug-copies 2 --note "hybrid on the central 128 px of a 171 px image" ;;
    # The first default (20261125-201729): the whole frame at 128 px.
    hybrid-128)   train --arch hybrid --image-size 128 --epochs 4 --lr 3e-4 --freeze-until auto --aug-copies 1 ;;
    mobilenetv2)  train --arch mobilenetv2 --image-size 96 --epochs 3 --lr 1e-4 --freeze-bn ;;
    xception)     train --arch xception --image-size 128 --epochs 3 --lr 3e-4 --freeze-until auto --aug-copies 1 ;;
    # 20261204-inceptionv3-213px-crop75 (55 min on 2 busy cores): the hybrid's recipe, 96.12%.
    # The earlier 20261126-053042 was --image-size 128 --epochs 2 (87.58%).
    inceptionv3)  train --arch inceptionv3 --image-size 213 --center-crop 0.75 --epochs 6 --lr 3e-4 --freeze-until auto --aug-copies 1 ;;
    supcon)       train --arch supcon --image-size 64 --epochs 2 --head-epochs 5 --lr 1e-4 --head-lr 1e-3 --freeze-bn ;;
    # From scratch: 32 px and 2-3 epochs. At 48 px one CNN epoch took 200 s on 2 cores, so 5 folds
    # x 5 epochs would take 80 minutes; 32 px costs (32/48)^2 = 0.44 of that per epoch. The deep
    # from-scratch nets barely get faster below 64 px (per-layer overhead: on one core an epoch
    # took 15 minutes for ResNet50 and 21 for VGG-16 at 32 px); DenseNet-201's 3 epochs took 22.
    cnn-cv)       train --arch cnn --image-size 32 --epochs 3 --folds 5 ;;
    unet)         train --arch unet --image-size 32 --epochs 3 ;;
    resnet50)     train --arch resnet50 --image-size 32 --epochs 3 ;;
    # Issue 25: from scratch with 128 px seen, the smallest size at which a cell's granules span
    # more than a pixel or two. The compact CNN on the whole 128 px frame (8 min an epoch here).
    cnn-128)      train --arch cnn --image-size 128 --epochs 8 --lr 1e-3 --run-id 20261205-cnn-128px --note "issue 25: the compact CNN from scratch at 128 px" ;;
    # MobileNetV2 (ImageNet weights) on the hybrid's recipe, every layer trainable with the
    # ImageNet batch-norm statistics kept (the 96 px model's setting, 2.5 min an epoch here).
    mobilenetv2-128) train --arch mobilenetv2 --image-size 171 --center-crop 0.75 --epochs 8 --lr 1e-4 --freeze-bn --run-id 20261205-mobilenetv2-171px-crop75 --note "issue 25: MobileNetV2 on the central 128 px of 171" ;;
    # The deep ones by progressive resizing, on the hybrid's recipe (the central 0.75 of the
    # frame): stage 1 from scratch on the central 64 px of 85 (half the time an epoch: per-layer
    # overhead, not arithmetic, bounds them below 128 px), stage 2 continues it at the central
    # 128 px of 171 (`--init-from`: no weight depends on the input size). Resume either stage
    # with python -m bcclassify train --resume RUN_ID on the machine that holds its checkpoints:
    # git keeps run records, not weights, so on a new machine delete stage 1's folder and train it
    # again (seed 42 reproduces it epoch for epoch) before stage 2. VGG-16 is the slowest: about
    # 5.5 minutes an epoch in stage 1 and 22 in stage 2 here, some 2 h 15 min for both.
    resnet50-64)     progressive_stage1 resnet50 8 ;;
    resnet50-128)    progressive_stage2 resnet50 4 ;;
    unet-64)         progressive_stage1 unet 8 ;;
    unet-128)        progressive_stage2 unet 4 ;;
    densenet201-64)  progressive_stage1 densenet201 8 ;;
    densenet201-128) progressive_stage2 densenet201 4 ;;
    # VGG-16 has no batch norm: from scratch at lr 1e-3 it stayed at chance (epoch 1: loss 2.07,
    # validation 19.5%, the majority class), as at 32 px, where 1e-4 was needed. Stage 2 restarts
    # at 1e-4: at the end of stage 1 its training accuracy was still rising (0.77, 0.80, 0.83).
    vgg16-64)        progressive_stage1 vgg16 8 1e-4 ;;
    vgg16-128)       progressive_stage2 vgg16 4 1e-4 ;;
    # On a lent GPU instead: scripts/gpu/README.md, "The zoo from scratch" (all five in one lease,
    # at the central 128 px of 171 from the first epoch).
    densenet201)  train --arch densenet201 --image-size 32 --epochs 3 ;;
    vgg16)        train --arch vgg16 --image-size 32 --epochs 3 --lr 1e-4 ;;
    smote-study)
      # As the reference: 128 px, no augmentation; MobileNetV2 fine-tuned above block 12 on
      # cached activations, SMOTE oversampling those activations (training part only).
      train --arch mobilenetv2 --image-size 128 --epochs 2 --no-augment --freeze-until block_12_add --note "SMOTE study: without SMOTE"
      train --arch mobilenetv2 --image-size 128 --epochs 2 --no-augment --freeze-until block_12_add --smote --note "SMOTE study: with SMOTE" ;;
    smote-study-frozen-bn)
      # The fair pair: batch-norm statistics frozen and lr 1e-4, the setting that kept
      # MobileNetV2's fine-tuning from drifting (the pair above learned at 1e-3 with them updating).
      train --arch mobilenetv2 --image-size 128 --epochs 2 --no-augment --freeze-until block_12_add --freeze-bn --lr 1e-4 --note "SMOTE study, frozen BN, lr 1e-4: without SMOTE"
      train --arch mobilenetv2 --image-size 128 --epochs 2 --no-augment --freeze-until block_12_add --freeze-bn --lr 1e-4 --smote --note "SMOTE study, frozen BN, lr 1e-4: with SMOTE" ;;
    shuffle-study)
      train --arch cnn --image-size 32 --epochs 3 --note "shuffle study: shuffled batches"
      train --arch cnn --image-size 32 --epochs 3 --no-shuffle --note "shuffle study: batches in class order" ;;
    *) echo "usage: $0 all|lanes|hybrid|hybrid-171|hybrid-128|mobilenetv2|xception|inceptionv3|supcon|cnn-cv|unet|resnet50|cnn-128|mobilenetv2-128|resnet50-64|resnet50-128|unet-64|unet-128|densenet201-64|densenet201-128|vgg16-64|vgg16-128|densenet201|vgg16|smote-study|smote-study-frozen-bn|shuffle-study" >&2
       return 2 ;;
  esac
}

queue() {
  for name in "$@"; do
    run "$name" || echo "train_zoo: $name failed; going on" >&2
  done
}

if [ "${1:-}" = all ]; then
  # shellcheck disable=SC2086
  queue ${ZOO:-mobilenetv2 xception cnn-cv unet shuffle-study resnet50 densenet201 vgg16 \
              supcon inceptionv3 smote-study}
elif [ "${1:-}" = lanes ]; then
  # Two queues, each pinned to one core: small from-scratch models use two threads poorly, so
  # two one-core runs side by side finish sooner than the same runs one after another.
  mkdir -p logs
  taskset -c 0 bash "$SELF" queue ${LANE_A:-cnn-cv shuffle-study unet vgg16} > logs/zoo-lane-a.log 2>&1 &
  taskset -c 1 bash "$SELF" queue ${LANE_B:-resnet50 smote-study inceptionv3 supcon densenet201} \
    > logs/zoo-lane-b.log 2>&1 &
  wait
elif [ "${1:-}" = queue ]; then
  shift
  queue "$@"
else
  run "${1:-help}"
fi
