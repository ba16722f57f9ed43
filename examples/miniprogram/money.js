// Money is integer fen end to end. Formatting uses integer arithmetic only: fen is
// never divided into a float for display.
function pad2(n) {
  return n < 10 ? '0' + n : String(n)
}

// 1990 -> "19.90", 5 -> "0.05", 123456 -> "1234.56"; anything but whole fen >= 0 -> "--"
function yuan(fen) {
  if (typeof fen !== 'number' || fen < 0 || fen % 1 !== 0) return '--'
  return Math.floor(fen / 100) + '.' + pad2(fen % 100)
}

// Sum of quantity x unit price, in fen.
function total(lines) {
  var sum = 0
  for (var i = 0; i < lines.length; i++) sum += lines[i].quantity * lines[i].price
  return sum
}

module.exports = {yuan: yuan, total: total}
