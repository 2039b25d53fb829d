"""Small worlds the project trains itself, to prove SFD offline on a CPU (DESIGN.md section 4)."""
