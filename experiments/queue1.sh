set -x
python experiments/probe.py --epochs 120 --window 500 --batch 40 --tag base120
python experiments/probe.py --epochs 60 --window 1000 --batch 8 --tag w1000b8
python experiments/probe.py --epochs 60 --window 500 --batch 8 --hidden 64 --tag h64b8
