// ccflow_fpga_top -- implementation harness for resource and Fmax runs (not part of the IP).
// The accelerator's streams are as wide as its vocabulary of logits, far more than the device's
// pins; inside a real system they connect to fabric (a DMA, a host interface). Here every input
// and output is registered and the logits are XOR-folded onto 16 pins, so no logic is optimized
// away and timing is measured between registers, not to pins. The verification-only trace port
// is left open (it only observes).
`include "ccflow_config.vh"
`default_nettype none

module ccflow_fpga_top (
  input  wire                            clk_i,
  input  wire                            rst_ni,
  input  wire                            s_axis_tvalid,
  output wire                            s_axis_tready,
  input  wire [`CCFLOW_TOK_BYTES*8-1:0]  s_axis_tdata,
  output wire                            m_axis_tvalid,
  input  wire                            m_axis_tready,
  output wire [15:0]                     m_axis_fold_o,
  output wire [7:0]                      sat_fold_o
);

  localparam integer LW = `CCFLOW_LOGIT_BYTES * 8;

  reg                           rst_nq, tvalid_q, tready_q;
  reg [`CCFLOW_TOK_BYTES*8-1:0] tdata_q;
  wire                          s_ready, m_valid;
  wire [LW-1:0]                 logits;
  wire [31:0]                   sat_count;
  wire                          trace_valid;
  wire [`CCFLOW_BLOCK_BITS-1:0] trace_block;
  wire [`CCFLOW_ROWS*`CCFLOW_ACC_BITS-1:0] trace_acc;

  ccflow_top u_top (
    .clk_i         (clk_i),
    .rst_ni        (rst_nq),
    .s_axis_tvalid (tvalid_q),
    .s_axis_tready (s_ready),
    .s_axis_tdata  (tdata_q),
    .m_axis_tvalid (m_valid),
    .m_axis_tready (tready_q),
    .m_axis_tdata  (logits),
    .trace_valid_o (trace_valid),
    .trace_block_o (trace_block),
    .trace_acc_o   (trace_acc),
    .sat_count_o   (sat_count)
  );

  reg [15:0] fold_q;
  reg [7:0]  sat_q;
  reg        s_ready_q, m_valid_q;
  reg [15:0] fold;
  reg [7:0]  sat;
  integer i;
  always @(*) begin
    fold = 16'd0;
    for (i = 0; i < LW; i = i + 1) begin
      fold[i % 16] = fold[i % 16] ^ logits[i];
    end
    sat = 8'd0;
    for (i = 0; i < 32; i = i + 1) begin
      sat[i % 8] = sat[i % 8] ^ sat_count[i];
    end
  end

  always @(posedge clk_i) begin
    rst_nq    <= rst_ni;
    tvalid_q  <= s_axis_tvalid;
    tdata_q   <= s_axis_tdata;
    tready_q  <= m_axis_tready;
    fold_q    <= fold;
    sat_q     <= sat;
    s_ready_q <= s_ready;
    m_valid_q <= m_valid;
  end

  assign s_axis_tready = s_ready_q;
  assign m_axis_tvalid = m_valid_q;
  assign m_axis_fold_o = fold_q;
  assign sat_fold_o    = sat_q;

endmodule

`default_nettype wire
